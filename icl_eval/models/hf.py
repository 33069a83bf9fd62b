"""A Hugging Face causal LM as an icl-eval backend: loading, tokenization and what the results say about it.

The work is split by job: this module loads the checkpoint and encodes text; models/hf_scoring.py scores
log-likelihoods (shared prefixes, rolling windows) and models/hf_generation.py decodes greedily with
continuous batching. Both are mixins of HFModel and share its batch budget (batching.BatchBudget), the one
out-of-memory strategy of the backend.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch

from icl_eval.allocator import trim_heap
from icl_eval.batching import BatchBudget
from icl_eval.devices import validate_device
from icl_eval.errors import IclEvalError
from icl_eval.models.hf_generation import GreedyGeneration
from icl_eval.models.hf_scoring import LoglikelihoodScoring, sliding_window
from icl_eval.models.tokenization import BOS_POLICIES, Tokenization, tokenizer_adds_bos

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(name: str) -> torch.device:
    name = validate_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cpu_measurements() -> Path:
    """Where the CPU's batch measurements (token budget, forward cost) are remembered, beside the digests."""
    from icl_eval.models.fingerprint import store_path

    return store_path().parent / "cpu-token-budget.json"


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


class HFModel(Tokenization, LoglikelihoodScoring, GreedyGeneration):
    """The backend (requests.Model): loglikelihood and loglikelihood_rolling from LoglikelihoodScoring,
    generate from GreedyGeneration, encoding from Tokenization (shared with the vLLM backend); the model,
    tokenizer and batch budget here."""

    gguf: dict[str, Any] | None = None  # where a GGUF --model came from (models/gguf.py), for the model block

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
        self.batch_size = batch_size
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never attended to: any id works
        self.adds_bos = tokenizer_adds_bos(self.tokenizer)
        # transformers renamed forward's `past_key_values` to `cache` (the old name warns, then goes): use
        # whichever this version's model takes, and read the output field of the same name.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        head = model.get_output_embeddings()
        self._vocab_size = getattr(head, "out_features", None) or len(tokenizer)
        self._split_head = self._head_matches_full_forward()
        # One question's candidates packed into one row (4D mask) instead of a KV-cache copy per candidate.
        self._packs = share_prefixes and self._packing_matches_plain()
        # transformers uses a ready 4D mask as it is, in sliding-window layers too (Gemma 3, Mistral): a packed
        # row is exact only while every key it lets a query see lies inside the window.
        self._attention_window = sliding_window(model.config)
        # "auto": as many rows as a token budget from free memory allows; a number: that many rows at most.
        forward_cost = self._forward_cost() if batch_size == "auto" and self.device.type == "cpu" else None
        self.budget = BatchBudget(
            max_rows=None if batch_size == "auto" else int(batch_size),
            tokens=self._auto_token_budget(forward_cost) if batch_size == "auto" else None,
            floor=self.max_length,
            forward_cost=forward_cost,
        )

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
        from icl_eval.models.gguf import find_gguf_file, converted_checkpoint

        gguf_file = find_gguf_file(path)
        gguf_source = None
        if gguf_file is not None:  # a GGUF file loads as the safetensors folder it was converted to once
            converted, gguf_source = converted_checkpoint(path, gguf_file)
            path = str(converted)
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
        trim_heap()  # the tokenizer build's freed heap would otherwise stay in the run's peak (icl_eval/allocator.py)
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
        loaded = cls(model, tokenizer, name=name, path=str(local.resolve()) if local.is_dir() else path, batch_size=batch_size, bos_policy=bos_policy)
        if gguf_source is not None:
            loaded.name, loaded.gguf = Path(gguf_source.file).name, gguf_source.describe()
        return loaded

    def _context_window(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return tok_max if isinstance(tok_max, int) and tok_max < 10**7 else 2048

    def _auto_token_budget(self, forward_cost: int | None = None) -> int:
        """Tokens per batch from free memory: a rough activation size per token, halved again on OOM."""
        cfg = self.model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 16)
        bytes_per_token = 4 * (12 * hidden + heads * self.max_length)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(self.max_length, min(int(free * 0.5 / bytes_per_token), 1 << 20))
        # On a CPU large batches buy little speed and cost memory and padding: the fewest tokens at which this
        # machine's matmuls at the model's shape are efficient, measured once (batching.cpu_token_budget). Not
        # floored at the context window: a longer row still runs, alone (plan_batches).
        from icl_eval.batching import cpu_token_budget, efficient_forward

        inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
        return efficient_forward(cpu_token_budget(hidden, inner, _cpu_measurements()), forward_cost)

    def _forward_cost(self) -> int | None:
        """One forward's cost beyond its tokens on this CPU, in tokens (batching.cpu_forward_cost): the batch
        planner pads rows only where that saves a forward's worth. None (filled batches) for a model that
        refuses the probe's forward (a remote-code model without `logits_to_keep`)."""
        from icl_eval.batching import cpu_forward_cost

        @torch.no_grad()
        def forward(n: int) -> None:
            self.model(input_ids=torch.full((1, n), self.prefix_id or 0, device=self.device), logits_to_keep=1)

        key = f"{type(self.model).__name__} {self.num_parameters} {self.dtype_name}"
        try:
            return cpu_forward_cost(forward, key, _cpu_measurements(), self.max_length)
        except (TypeError, ValueError, RuntimeError):
            return None

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

    def _cache_of(self, out):
        """The KV cache a forward pass returned, read by the field name this transformers version uses."""
        return getattr(out, self._cache_arg)

    @property
    def max_rows(self) -> int | None:
        """Rows per batch now (None: only the token budget limits them); an out-of-memory halves it until the next call."""
        return self.budget.max_rows

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as results.json names it ("float32"), also part of the forward-cost key."""
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> dict[str, Any]:
        """The results' model block."""
        return {
            "name": self.name, "path": self.path, "num_parameters": self.num_parameters, "dtype": self.dtype_name,
            "device": str(self.device), "fingerprint": self.fingerprint(), "max_length": self.max_length,
            **({"gguf": self.gguf} if self.gguf else {}),  # file, sha256, quantisation types
        }

    def settings(self) -> dict[str, Any]:
        """The backend's part of the results' settings block (wrappers add theirs: cache, processes)."""
        return {"batch_size": self.batch_size, "bos_policy": self.bos_policy, "bos": self.bos_description}

    def fingerprint(self) -> str:
        """Identifies config, dtype, weights (every byte of the files, or the hub revision), tokenizer, BOS policy."""
        from icl_eval.models.fingerprint import model_fingerprint

        if not hasattr(self, "_fingerprint"):  # hashing weight files costs I/O: once per loaded model
            self._fingerprint = model_fingerprint(self.model, self.tokenizer, self.path, self.bos_policy)
        return self._fingerprint
