"""A Hugging Face causal LM scored by log-likelihood and greedy generation, batched."""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from icl_eval.batching import group_shared_prefixes, is_out_of_memory, plan_batches, run_splitting_on_oom
from icl_eval.devices import validate_device
from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult

BOS_POLICIES = ("tokenizer", "always", "never")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Progress = Callable[[int, int], None]  # (requests done, tokens done) since the last call
# Called with (request index, result) as each result is computed, so a cache can store it before the run ends.
OnResult = Callable[[int, object], None]


@dataclass(frozen=True)
class Encoded:
    """A request's tokens: the model reads context + continuation[:-1] and is scored on the continuation."""

    context: list[int]
    continuation: list[int]




def _device(name: str) -> torch.device:
    name = validate_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_checkpoint_folder(path: str, folder: Path) -> None:
    """A local --model folder: readable, and a checkpoint rather than a folder of them."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise IclEvalError(f"--model {path}: permission denied reading the folder {folder}; make it readable (chmod u+rx) or run as a user who can read it")
    config = folder / "config.json"
    if not config.is_file():
        checkpoints = sorted(d.name for d in folder.iterdir() if d.is_dir() and (d / "config.json").is_file())
        if checkpoints:
            shown = ", ".join(checkpoints[:8]) + (f" and {len(checkpoints) - 8} more" if len(checkpoints) > 8 else "")
            raise IclEvalError(f"--model {path}: a folder of checkpoints, not a checkpoint (no config.json here); give one of its subfolders: {shown}")
        return  # transformers' own message (no config.json) follows
    unreadable = [f for f in sorted(folder.iterdir()) if f.is_file() and not os.access(f, os.R_OK)]
    if unreadable:
        names = ", ".join(str(f) for f in unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        raise IclEvalError(f"--model {path}: permission denied reading {names}; make the checkpoint's files readable (chmod u+r)")


def _check_vocabulary(where: str, tokenizer_size: int, rows: int, what: str) -> None:
    """Every id the tokenizer can produce must have an embedding row: a larger id fails mid-run (an index error)."""
    if tokenizer_size > rows:
        raise IclEvalError(
            f"{where}: the tokenizer has {tokenizer_size} tokens (ids up to {tokenizer_size - 1}) but {what.format(rows)}; "
            "use the tokenizer that belongs to this checkpoint (or fix vocab_size)"
        )


def _tied_targets(model: torch.nn.Module) -> set[str]:
    """Parameters the architecture ties to another one (lm_head to the input embeddings): a checkpoint may omit them."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if not getattr(text_cfg, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)):
        return set()
    tied = getattr(model, "_tied_weights_keys", None) or ()
    return set(tied.keys() if isinstance(tied, dict) else tied)


def _names_match(pattern: str, name: str) -> bool:
    """transformers spells tied parameters as names or as regular expressions over names."""
    try:
        return pattern == name or re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _check_loading_info(path: str, model: torch.nn.Module, info: dict) -> None:
    """Weights the architecture expects but the checkpoint lacks would be random: refuse instead of scoring noise."""
    tied = _tied_targets(model)
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(_names_match(t, k) for t in tied))
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ()))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if parts:
        why = "the missing ones would be random numbers" if missing else "the checkpoint holds weights this architecture does not use"
        raise IclEvalError(
            f"--model {path}: the checkpoint's weights do not match its {type(model).__name__} architecture: {'; '.join(parts)}; "
            f"{why}: fix the weight names, or config.json if it names the wrong architecture"
        )


class HFModel:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str = "model",
        path: str = "",
        batch_size: int | str = "auto",
        bos_policy: str = "tokenizer",
        max_length: int | None = None,
        share_prefixes: bool = True,
        min_shared_prefix: int = 16,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise IclEvalError(f"{path or name}: icl-eval needs a fast (Rust) tokenizer for character offsets; provide tokenizer.json")
        if bos_policy not in BOS_POLICIES:
            raise IclEvalError(f"--bos {bos_policy}: choose one of {', '.join(BOS_POLICIES)}")
        embeddings = model.get_input_embeddings()
        if isinstance(getattr(embeddings, "num_embeddings", None), int):
            _check_vocabulary(path or name, len(tokenizer), embeddings.num_embeddings, "the model's embedding matrix has only {} rows")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.bos_policy = bos_policy
        # Rows sharing at least this many leading tokens forward them once; off, every row is forwarded whole.
        self.share_prefixes = share_prefixes
        self.min_shared_prefix = min_shared_prefix
        self.tokens_forwarded = 0  # real (unpadded) tokens run through the model: benchmarks derive FLOPs from it
        self.max_length = max_length or self._context_window()
        self.max_rows = None if batch_size == "auto" else int(batch_size)
        self.token_budget = self._auto_token_budget() if batch_size == "auto" else None
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never attended to: any id works
        self.adds_bos = self._tokenizer_adds_bos()
        # transformers renamed forward's `past_key_values` to `cache` (the old name warns, then goes): use
        # whichever this version's model takes, and read the output field of the same name.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._split_head = self._head_matches_full_forward()

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = "auto",
        bos_policy: str = "tokenizer",
        trust_remote_code: bool = False,
        device_map: str | None = None,
    ) -> HFModel:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        dev = _device(device)  # first: a typo in --device should cost no file access
        local = Path(path).expanduser()
        looks_local = path.startswith((".", "/", "~")) or local.exists()  # else it is a hub id like org/name
        if looks_local and not local.is_dir():
            raise IclEvalError(f"--model {path}: no such folder; give a Hugging Face checkpoint folder (config.json + weights) or a hub id")
        if looks_local:
            _check_checkpoint_folder(path, local)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise IclEvalError(f"--model {path}: cannot read config.json ({type(e).__name__}: {str(e).splitlines()[0][:200]}); give a checkpoint folder or a reachable hub id") from None
        if dtype == "auto":
            torch_dtype = torch.float32 if dev.type == "cpu" else (getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32)
        elif dtype in DTYPES:
            torch_dtype = DTYPES[dtype]
        else:
            raise IclEvalError(f"--dtype {dtype}: choose auto, {', '.join(DTYPES)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise IclEvalError(f"--model {path}: cannot load its tokenizer ({type(e).__name__}); the folder needs tokenizer.json or vocab files") from None
        if len(tokenizer) <= 1 or not tokenizer("a", add_special_tokens=False).input_ids:  # transformers builds an empty one when files are missing
            raise IclEvalError(f"--model {path}: cannot load its tokenizer (no tokenizer files found, it would be empty); the folder needs tokenizer.json or vocab files")
        try:
            # device_map="auto": accelerate places layers over every visible GPU (then CPU), for models too big for one.
            extra = {"device_map": device_map} if device_map else {}
            model, info = AutoModelForCausalLM.from_pretrained(
                path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=None, output_loading_info=True, **extra
            )
        except ValueError as e:
            raise IclEvalError(f"--model {path}: not a causal language model ({str(e).splitlines()[0][:200]})") from None
        except OSError as e:
            raise IclEvalError(f"--model {path}: cannot load weights ({str(e).splitlines()[0][:200]})") from None
        except Exception as e:  # e.g. a pickled .bin that torch's weights-only loader refuses: it would run code
            if "ignore_mismatched_sizes" in str(e):
                raise IclEvalError(f"--model {path}: some weights in the checkpoint have other shapes than config.json describes; fix config.json or the weights") from None
            why = "a pickled weights file holds objects other than tensors; loading it could run code" if "Unpickl" in type(e).__name__ else f"{type(e).__name__}: {str(e).strip()[:200]}".splitlines()[0]
            raise IclEvalError(f"--model {path}: cannot load weights ({why}); use a checkpoint saved as safetensors") from None
        _check_loading_info(path, model, info)
        vocab_size = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size", None)
        if isinstance(vocab_size, int):  # after the load: a config that is no causal LM at all says so first
            _check_vocabulary(f"--model {path}", len(tokenizer), vocab_size, "config.json's vocab_size is {}")
        if not device_map:
            model.to(dev)
        name = local.name if local.is_dir() else path
        return cls(model, tokenizer, name=name, path=str(local.resolve()) if local.is_dir() else path, batch_size=batch_size, bos_policy=bos_policy)

    def _context_window(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return tok_max if isinstance(tok_max, int) and tok_max < 10**7 else 2048

    def _auto_token_budget(self) -> int:
        """Tokens per batch from free memory: a rough activation size per token, halved again on OOM."""
        cfg = self.model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 16)
        bytes_per_token = 4 * (12 * hidden + heads * self.max_length)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(self.max_length, min(int(free * 0.5 / bytes_per_token), 1 << 20))
        # On a CPU large batches buy little speed and cost memory; a few thousand tokens is the sweet spot.
        return max(self.max_length, 4096)

    def _tokenizer_adds_bos(self) -> bool:
        ids = self.tokenizer("a").input_ids
        return bool(ids) and self.tokenizer.bos_token_id is not None and ids[0] == self.tokenizer.bos_token_id

    def _head_matches_full_forward(self) -> bool:
        """Whether base model + output embeddings reproduce the full logits (no softcapping or scaling after)."""
        head = self.model.get_output_embeddings()
        if head is None or not hasattr(self.model, "get_decoder"):
            return False
        ids = torch.tensor([[self.prefix_id or 0] * 4], device=self.device)
        with torch.no_grad():
            full = self.model(input_ids=ids).logits[0, -1].float()
            split = head(self.model.get_decoder()(input_ids=ids).last_hidden_state[0, -1]).float()
        return torch.allclose(full, split, atol=1e-4, rtol=1e-3)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def bos_description(self) -> str:
        added = "adds BOS" if self.adds_bos else "adds no BOS"
        return f"{self.bos_policy} (tokenizer {added}; empty contexts get token {self.prefix_id})"

    def fingerprint(self) -> str:
        """Identifies config, dtype, weights (every byte of the files, or the hub revision), tokenizer, BOS policy."""
        from icl_eval.models.fingerprint import model_fingerprint

        if not hasattr(self, "_fingerprint"):  # hashing weight files costs I/O: once per loaded model
            self._fingerprint = model_fingerprint(self.model, self.tokenizer, self.path, self.bos_policy)
        return self._fingerprint

    def describe(self) -> dict:
        """The results' model block."""
        return {
            "name": self.name, "path": self.path, "num_parameters": self.num_parameters, "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device), "fingerprint": self.fingerprint(), "max_length": self.max_length,
        }

    def settings(self) -> dict:
        """The backend's part of the results' settings block."""
        return {"batch_size": "auto" if self.max_rows is None else self.max_rows, "bos_policy": self.bos_policy, "bos": self.bos_description}

    # --- tokenization --------------------------------------------------------------------
    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.bos_policy == "never" or (self.bos_policy == "tokenizer" and not self.adds_bos):
            return ids
        return [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.prefix_id] + ids

    def encode(self, text: str) -> list[int]:
        # verbose=False: a prompt is tokenized whole to learn whether it fits, so being longer than the tokenizer's
        # model_max_length is expected here, not a mistake worth transformers' warning (we truncate ourselves).
        return self._with_bos(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def encode_pair(self, context: str, continuation: str) -> Encoded:
        """Split tokenize(context + continuation) at the character boundary, using the tokenizer's offsets.

        Trailing whitespace of the context moves to the continuation first (lm-eval's rule), so that
        " 143" is one token rather than " " closing the context. A token that straddles the boundary
        belongs to the continuation: it holds continuation characters.
        """
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        """encode_pair for many pairs, tokenized in one batched call (the fast tokenizer works in parallel)."""
        moved = []
        for context, continuation in pairs:
            n_space = len(context) - len(context.rstrip())
            if n_space:
                context, continuation = context[:-n_space], context[-n_space:] + continuation
            if not continuation:
                raise IclEvalError("empty continuation: a log-likelihood request needs text to score")
            moved.append((context, continuation))
        # An empty context gets the prefix token and the continuation is tokenized alone.
        texts = [c + t if c else t for c, t in moved]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False) if texts else {"input_ids": [], "offset_mapping": []}
        out = []
        for (context, _), ids, offsets in zip(moved, enc["input_ids"], enc["offset_mapping"]):
            if not context:
                out.append(Encoded([self.prefix_id], ids))
                continue
            boundary = len(context)
            split = next((i for i, (start, end) in enumerate(offsets) if end > boundary or start >= boundary), len(ids))
            out.append(Encoded(self._with_bos(ids[:split]), ids[split:]))
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # --- log-likelihood ------------------------------------------------------------------
    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[LoglikelihoodResult]:
        """Scores every request; rows that start with the same tokens have that prefix forwarded only once.

        Candidates of one multiple-choice question (identical contexts) and prompts that open with the same
        fixed demonstrations are grouped by their common token prefix; the prefix's KV cache is computed
        once per group and each row forwards only its own remaining tokens. Other rows go through plain
        length-sorted batches. Both paths give the same scores within float rounding.
        """
        encoded = self.encode_pairs([(r.context, r.continuation) for r in requests])
        for r, e in zip(requests, encoded):
            if len(e.continuation) > self.max_length:
                raise IclEvalError(f"a continuation of {len(e.continuation)} tokens is longer than the model's context ({self.max_length}): {r.continuation[:60]!r}")
        inputs = [self._model_input(e) for e in encoded]
        lengths = [len(x) for x in inputs]
        results: list[LoglikelihoodResult | None] = [None] * len(requests)

        def finish(done: list[int], scored: list[tuple[float, bool, bool]]) -> None:
            for i, res in zip(done, scored):
                results[i] = LoglikelihoodResult(
                    res[0], len(encoded[i].continuation), len(requests[i].continuation), res[1],
                    left_truncated=len(encoded[i].context) + len(encoded[i].continuation) - 1 > self.max_length,
                    finite=res[2],
                )
                if on_result:
                    on_result(i, results[i])
            if progress:
                progress(len(done), sum(lengths[i] for i in done))

        if self.share_prefixes:
            self._score_sharing(None, 0, [(i, inputs[i], encoded[i].continuation) for i in range(len(requests))], finish)
        else:
            self._score_plain(list(range(len(requests))), encoded, lengths, finish)
        return results  # type: ignore[return-value]

    def _model_input(self, e: Encoded) -> list[int]:
        """What the model reads: context + continuation without its last token, left-truncated to the window."""
        return (e.context + e.continuation)[:-1][-self.max_length :]

    def _halve_budget(self) -> None:
        if self.token_budget is not None:
            self.token_budget = max(self.max_length, self.token_budget // 2)
        if self.max_rows is not None:
            self.max_rows = max(1, self.max_rows // 2)

    def _score_plain(self, indices: list[int], encoded: list[Encoded], lengths: list[int], finish) -> None:
        for batch in plan_batches([lengths[i] for i in indices], self.max_rows, self.token_budget):
            batch = [indices[j] for j in batch]
            for done, scored in run_splitting_on_oom(batch, lambda b: self._score_batch([encoded[i] for i in b]), self._halve_budget):
                finish(done, scored)

    def _score_sharing(self, cache, n_prefix: int, rows: list[tuple[int, list[int], list[int]]], finish) -> None:
        """Score rows that follow a prefix already in `cache` (None: no prefix), forwarding shared tokens once.

        rows: (request index, tokens after the prefix, continuation tokens). A row's shareable tokens end
        before its first scored position: that position's token must be forwarded with the row, since its
        output predicts the continuation's first token. Groups found here extend the cache by their common
        tokens and recurse, so a fixed demonstration prefix and then each question's own context are both
        forwarded once.
        """
        shareable = [s[: len(s) - len(c)] for _, s, c in rows]
        groups, alone = group_shared_prefixes(shareable, self.min_shared_prefix)
        for shared, members in groups:
            sub = self._extend_cache(cache, n_prefix, rows[members[0]][1][:shared])
            self._score_sharing(sub, n_prefix + shared, [(rows[m][0], rows[m][1][shared:], rows[m][2]) for m in members], finish)
            del sub
        if not alone:
            return
        if cache is None:
            self._score_plain([rows[m][0] for m in alone], *self._plain_inputs(rows, alone), finish)
            return
        # Each row's copy of the cache holds prefix + suffix positions: budget the batch on both.
        sizes = [n_prefix + len(rows[m][1]) for m in alone]
        for batch in plan_batches(sizes, self.max_rows, self.token_budget):
            members = [rows[alone[j]] for j in batch]
            for done, scored in run_splitting_on_oom(members, lambda b: self._score_against_prefix(cache, n_prefix, b), self._halve_budget):
                finish([i for i, _, _ in done], scored)

    @staticmethod
    def _plain_inputs(rows, alone: list[int]) -> tuple[dict[int, Encoded], dict[int, int]]:
        """Rows with no shared prefix, as Encoded (the input already left-truncated) and lengths, keyed by index."""
        encoded = {rows[m][0]: Encoded(rows[m][1][: len(rows[m][1]) - len(rows[m][2]) + 1], rows[m][2]) for m in alone}
        return encoded, {i: len(e.context) + len(e.continuation) - 1 for i, e in encoded.items()}

    @torch.no_grad()
    def _extend_cache(self, cache, n_prefix: int, tokens: list[int]):
        """A new cache: `cache` (or nothing) followed by `tokens`, forwarded once as a single row."""
        self.tokens_forwarded += len(tokens)
        ids = torch.tensor([tokens], device=self.device)
        if cache is None:
            return self._cache_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1))
        cache = copy.deepcopy(cache)
        positions = torch.arange(n_prefix, n_prefix + len(tokens), device=self.device)[None]
        return self._cache_of(self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}))

    @torch.no_grad()
    def _score_against_prefix(self, prefix_cache, n_prefix: int, rows: list[tuple[int, list[int], list[int]]]) -> list[tuple[float, bool, bool]]:
        ids = self._right_padded([s for _, s, _ in rows])  # after the shared prefix
        positions = torch.arange(n_prefix, n_prefix + ids.shape[1])[None].expand(len(rows), -1)
        self.tokens_forwarded += sum(len(s) for _, s, _ in rows)
        cache = copy.deepcopy(prefix_cache)  # each batch extends its own copy; the prefix stays reusable
        cache.batch_repeat_interleave(len(rows))
        kwargs = dict(
            input_ids=ids.to(self.device), position_ids=positions.to(self.device), use_cache=True, **{self._cache_arg: cache},
        )
        spans = [(b, len(s) - len(c), c) for b, (_, s, c) in enumerate(rows)]
        return self._score_positions(kwargs, spans)

    def _score_positions(self, forward_kwargs: dict, spans: list[tuple[int, int, list[int]]]) -> list[tuple[float, bool, bool]]:
        """Run the model and score, per (row, first scored position, targets), only the positions needed."""
        row_idx, pos_idx, targets = [], [], []
        for b, start, target in spans:
            row_idx += [b] * len(target)
            pos_idx += range(start, start + len(target))
            targets += target
        row_t = torch.tensor(row_idx, device=self.device)
        pos_t = torch.tensor(pos_idx, device=self.device)
        if self._split_head:
            hidden = self.model.get_decoder()(**forward_kwargs).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[row_t, pos_t])
        else:
            logits = self.model(**forward_kwargs).logits[row_t, pos_t]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target_t = torch.tensor(targets, device=self.device)
        token_lp = logprobs.gather(1, target_t[:, None])[:, 0]
        greedy = logprobs.argmax(-1) == target_t
        finite = torch.isfinite(logprobs).all(-1)
        out, start = [], 0
        for _, _, target in spans:
            end = start + len(target)
            out.append((token_lp[start:end].sum().item(), bool(greedy[start:end].all()), bool(finite[start:end].all())))
            start = end
        return out

    def _right_padded(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """Token rows as one tensor, padded on the right: real tokens keep positions 0..n-1 and, under the causal
        mask alone, never see a pad (whose outputs are never read), so no attention mask is needed."""
        ids = torch.full((len(rows), max(len(x) for x in rows)), self.pad_id, dtype=torch.long)
        for b, x in enumerate(rows):
            ids[b, : len(x)] = torch.tensor(x)
        return ids

    @torch.no_grad()
    def _score_batch(self, rows: list[Encoded]) -> list[tuple[float, bool, bool]]:
        """(sum log-prob, is_greedy, finite) per row; log-softmax only at continuation positions."""
        inputs = [self._model_input(r) for r in rows]
        ids = self._right_padded(inputs)
        self.tokens_forwarded += sum(len(x) for x in inputs)
        spans = [(b, len(x) - len(r.continuation), r.continuation) for b, (x, r) in enumerate(zip(inputs, rows))]
        # No attention mask (see _right_padded): attention takes its fused causal path.
        return self._score_positions(dict(input_ids=ids.to(self.device)), spans)

    # --- greedy generation ---------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[GenerationResult]:
        """Greedy decoding, continuously batched: a row leaves the batch the step it stops, and a waiting row
        takes its place, so the batch stays full and finished rows cost nothing further."""
        encoded = []
        for r in requests:
            room = self.max_length - r.max_new_tokens
            if room < 1:
                raise IclEvalError(f"max_new_tokens {r.max_new_tokens} leaves no room for a prompt in the model's context ({self.max_length})")
            ids = self.encode(r.context) or [self.prefix_id]
            encoded.append((ids[-room:], len(ids) > room))
        lengths = [len(ids) + r.max_new_tokens for (ids, _), r in zip(encoded, requests)]
        results: list[GenerationResult | None] = [None] * len(requests)

        def finish(i: int, out: tuple[str, str, int]) -> None:
            results[i] = GenerationResult(*out, left_truncated=encoded[i][1])
            if on_result:
                on_result(i, results[i])
            if progress:
                progress(1, len(encoded[i][0]) + out[2])

        pending = deque(sorted(range(len(requests)), key=lambda i: -lengths[i]))  # longest first: OOM shows early
        while pending:
            capacity = self._generation_rows(lengths[pending[0]])
            try:
                self._generate_stream(pending, capacity, [(ids, r) for (ids, _), r in zip(encoded, requests)], finish)
            except Exception as e:  # rows in flight went back to `pending`; finished rows are kept
                if not is_out_of_memory(e) or capacity == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._halve_budget()
                if self.max_rows is None and self.token_budget is not None and self.token_budget <= self.max_length:
                    self.max_rows = max(1, capacity // 2)  # the budget cannot shrink further: cap the rows instead
        return results  # type: ignore[return-value]

    def _generation_rows(self, longest: int) -> int:
        rows = self.max_rows or 1 << 30
        if self.token_budget is not None:
            rows = min(rows, max(1, self.token_budget // longest))
        return rows

    @torch.no_grad()
    def _generate_stream(self, pending: deque, capacity: int, rows: list[tuple[list[int], GenerationRequest]], finish) -> None:
        """Decode until `pending` is empty, at most `capacity` rows at a time; waiting rows join as others stop.

        Rows are left-padded, so every row's next token sits in the last column; a joining group is prefilled
        on its own and its KV cache is padded on the left to the running batch's width (or the batch's to its).
        """
        active: list[int] = []  # request indices, one per batch row
        decoders: dict[int, _StopDecoder] = {}
        cache = mask = last_pos = next_tokens = None
        eos = self.tokenizer.eos_token_id
        try:
            while pending or active:
                free = capacity - len(active)
                if pending and (not active or (free >= max(1, capacity // 4) and self._can_merge(cache))):
                    joining = [pending.popleft() for _ in range(min(free, len(pending)))]
                    for i in joining:
                        decoders[i] = _StopDecoder(self.tokenizer, rows[i][1].until, rows[i][1].max_new_tokens)
                    c2, m2, p2, t2 = self._prefill([rows[i][0] for i in joining])
                    if active:
                        cache, mask = _merge_left_padded(cache, mask, c2, m2)
                        last_pos, next_tokens = torch.cat([last_pos, p2]), torch.cat([next_tokens, t2])
                    else:
                        cache, mask, last_pos, next_tokens = c2, m2, p2, t2
                    active += joining
                keep = [k for k, (i, tok) in enumerate(zip(active, next_tokens.tolist())) if not decoders[i].push(tok, eos)]
                for k, i in enumerate(active):
                    if decoders[i].done:
                        finish(i, decoders.pop(i).result())
                if len(keep) < len(active):
                    active = [active[k] for k in keep]
                    if not active:
                        cache = mask = last_pos = next_tokens = None
                        continue
                    keep_t = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(keep_t)
                    mask, last_pos, next_tokens = mask[keep_t], last_pos[keep_t], next_tokens[keep_t]
                    cache, mask = _trim_left_padding(cache, mask)
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                last_pos = last_pos + 1
                self.tokens_forwarded += len(active)
                out = self.model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=last_pos, use_cache=True, **{self._cache_arg: cache})
                next_tokens = out.logits[:, -1].argmax(-1)
        except BaseException:
            pending.extendleft(reversed(active))  # unfinished rows start again; finished ones were reported
            raise

    def _prefill(self, prompts: list[list[int]]):
        """(cache, mask, last position, first generated token) for left-padded prompts."""
        width = max(len(x) for x in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, x in enumerate(prompts):
            ids[b, width - len(x) :] = torch.tensor(x)
            mask[b, width - len(x) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.tokens_forwarded += sum(len(x) for x in prompts)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return self._cache_of(out), mask, positions[:, -1:], out.logits[:, -1].argmax(-1)

    def _cache_of(self, out):
        """The KV cache a forward pass returned, read by the field name this transformers version uses."""
        return getattr(out, self._cache_arg)

    @staticmethod
    def _can_merge(cache) -> bool:
        """Joining a running batch needs plain per-layer key/value tensors (no sliding windows or quantized caches)."""
        layers = getattr(cache, "layers", None)
        return bool(layers) and all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None for layer in layers)


def _merge_left_padded(cache, mask: torch.Tensor, other, other_mask: torch.Tensor):
    """Stack two left-padded batches (KV cache and attention mask): the narrower one gets more padding on the left.

    Each merged tensor is allocated once and both parts are copied into its right-aligned slices: widening
    copies first would hold three versions of a layer at once, more than a decoding step's own concatenation.
    """
    width = max(mask.shape[1], other_mask.shape[1])

    def stacked(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(a.shape)
        shape[0], shape[dim] = a.shape[0] + b.shape[0], width
        out = a.new_zeros(shape)
        out[: a.shape[0]].narrow(dim, width - a.shape[dim], a.shape[dim]).copy_(a)
        out[a.shape[0] :].narrow(dim, width - b.shape[dim], b.shape[dim]).copy_(b)
        return out

    for layer, new in zip(cache.layers, other.layers):
        layer.keys = stacked(layer.keys, new.keys, 2)
        layer.values = stacked(layer.values, new.values, 2)
    return cache, stacked(mask, other_mask, 1)


def _trim_left_padding(cache, mask: torch.Tensor):
    """Drop leading columns that no remaining row attends to, so a long-running batch does not keep growing."""
    first = int(mask.any(0).nonzero()[0]) if mask.any() else 0
    if first == 0 or not HFModel._can_merge(cache):
        return cache, mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return cache, mask[:, first:]


class _StopDecoder:
    """Detokenizes one row incrementally and watches for its stop sequences in the new text only."""

    def __init__(self, tokenizer, until: Sequence[str], max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.until = [u for u in until if u]
        self.longest_stop = max((len(u) for u in self.until), default=0)
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens before this index are already in self.text
        self._stop_at: int | None = None
        self.done = max_new_tokens == 0

    def push(self, token: int, eos: int | None) -> bool:
        """Add one generated token; True when the row is finished."""
        if self.done:
            return True
        if token == eos:
            self.done = True
            return True
        self.tokens.append(token)
        # Decode a short window and keep only what the new token added: decoding a lone suffix would drop
        # SentencePiece's leading spaces, and a character split over tokens shows as U+FFFD until complete.
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            searched_from = max(0, len(self.text) - self.longest_stop + 1)
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            hits = [i for u in self.until if (i := self.text.find(u, searched_from)) >= 0]
            if hits:
                self._stop_at = min(hits)
                self.done = True
        if len(self.tokens) >= self.max_new_tokens:
            self.done = True
        return self.done

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def result(self) -> tuple[str, str, int]:
        if self._read < len(self.tokens):
            before = self._decode(self.tokens[self._prefix : self._read])
            self.text += self._decode(self.tokens[self._prefix :])[len(before) :]
            self._read = len(self.tokens)
            hits = [i for u in self.until if (i := self.text.find(u)) >= 0]
            if hits:
                self._stop_at = min(hits)
        text = self.text if self._stop_at is None else self.text[: self._stop_at]
        return self.text, text, len(self.tokens)
