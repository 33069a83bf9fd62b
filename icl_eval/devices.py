"""--device checked before the model loads: a typo or a missing GPU should cost no load time."""

from __future__ import annotations

import re

from icl_eval.errors import IclEvalError

DEVICES = "cpu, cuda, cuda:N, mps or auto"
_NAME = re.compile(r"(cpu|cuda|mps|auto)(?::([0-9]+))?")
_HINTS = {"gpu": "; for a GPU use --device cuda (or cuda:N)", "meta": "; 'meta' holds no weights, so nothing can run on it"}


def check_device(value: str, cuda_count: int, mps_available: bool) -> str:
    """The canonical device name ('auto' stays 'auto'), if this machine has it; pure: the caller says what the
    machine has. Refuses, as one line with the fix, a device torch cannot run a model on (tpu9, gpu, meta)
    and one this machine lacks (cuda without CUDA, cuda:3 with two GPUs, mps off a Mac)."""
    name = value.strip().lower()
    match = _NAME.fullmatch(name)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise IclEvalError(f"--device {value}: not a device icl-eval can run on; use {DEVICES}{_HINTS.get(name.split(':')[0], '')}")
    kind, index = match.groups()
    if kind == "mps" and not mps_available:
        raise IclEvalError(f"--device {value}: Apple's MPS backend is not available on this machine; use --device cpu or auto")
    if kind != "cuda":
        return kind
    if cuda_count == 0:
        raise IclEvalError(f"--device {value}: no CUDA device is visible; use --device cpu or auto")
    if index is not None and int(index) >= cuda_count:
        raise IclEvalError(f"--device {value}: only {cuda_count} CUDA device(s) are visible (cuda:0 to cuda:{cuda_count - 1}); pick one of them or use --device cuda")
    return f"cuda:{int(index)}" if index is not None else "cuda"


def validate_device(value: str) -> str:
    """check_device against this machine's CUDA and MPS devices."""
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    return check_device(value, cuda_count, bool(mps is not None and mps.is_available()))
