"""--device checked before the model loads: a typo or a missing GPU should cost no load time."""

from __future__ import annotations

import re

from icl_eval.errors import IclEvalError

_CUDA = re.compile(r"cuda(?::([0-9]+))?")


def check_device(value: str, cuda_count: int, mps_available: bool) -> str:
    """The device name as given, if this machine has it; pure: the caller says what the machine has."""
    if value in ("auto", "cpu"):
        return value
    if value == "mps":
        if not mps_available:
            raise IclEvalError("--device mps: no Apple MPS device is available; use --device cpu or auto")
        return value
    match = _CUDA.fullmatch(value)
    if match is None:
        raise IclEvalError(f"--device {value}: unknown device; use cpu, cuda, cuda:N or auto")
    if cuda_count == 0:
        raise IclEvalError(f"--device {value}: no CUDA device is visible; use --device cpu or auto")
    if match.group(1) is not None and int(match.group(1)) >= cuda_count:
        raise IclEvalError(f"--device {value}: only {cuda_count} CUDA device(s) are visible (cuda:0 to cuda:{cuda_count - 1}); pick one of them or use --device cuda")
    return value


def validate_device(value: str) -> str:
    """check_device against this machine's CUDA and MPS devices."""
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    return check_device(value, cuda_count, bool(mps is not None and mps.is_available()))
