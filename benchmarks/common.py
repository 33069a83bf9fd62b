"""What the benchmarks share: the default model, the shared data folder, timing and peak-memory measurement."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ICL_EVAL_SHARED", REPO.parent / "shared"))


def load_model(path: str | None, dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """(model, tokenizer, description): a checkpoint folder, or GPT-2 124M's architecture with random weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch_dtype = getattr(torch, dtype)
    if path:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        return model, tok, f"{path} ({dtype})"
    tok_dir = SHARED / "tokenizers" / "gpt2"
    if not (tok_dir / "vocab.json").exists():
        raise SystemExit(f"{tok_dir}: the GPT-2 vocabulary is missing; set ICL_EVAL_SHARED or pass --model")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok))).to(device=device, dtype=torch_dtype).eval()
    return model, tok, f"GPT-2 124M architecture, random weights (seed {seed}), {dtype}"


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak memory above the starting point in MiB).

    CPU: the resident set's high-water mark, reset first through /proc/self/clear_refs, so each call
    reports its own peak. CUDA: torch's peak allocated bytes.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        base = rss_kib() * 1024
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    return out, seconds, max(0, peak - base) / 2**20


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPU cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"
