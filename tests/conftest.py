"""Shared fixtures: tiny seeded models built in-process, the real GPT-2 vocabulary when shared/ is beside us."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import icl_eval  # noqa: F401 -- first: it hides media packages built for another torch before transformers looks

# No test may reach a hub: data and models come from the test itself or from shared/.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    root = Path(os.environ.get("ICL_EVAL_SHARED", REPO.parent / "shared"))
    return root if (root / "data").is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_dir()
    if root is None:
        pytest.skip("shared/ data not found beside the checkout (set ICL_EVAL_SHARED)")
    return root


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 BPE when shared/ is present (tricky boundaries are real there), else a built one."""
    from icl_eval.models.tiny import gpt2_tokenizer_or_built

    root = shared_dir()
    return gpt2_tokenizer_or_built(root / "tokenizers" / "gpt2" if root else None)


@pytest.fixture(scope="session")
def tiny_gpt2_model(gpt2_tokenizer):
    from icl_eval.models.tiny import tiny_gpt2

    return tiny_gpt2(len(gpt2_tokenizer), n_positions=512, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny random GPT-2 with its tokenizer, loadable with --model."""
    from icl_eval.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2", n_positions=512)


def make_hf_model(model, tokenizer, **kw):
    from icl_eval.models.hf import HFModel

    return HFModel(model, tokenizer, name="tiny", **kw)
