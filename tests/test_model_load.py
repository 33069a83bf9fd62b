"""Loading a model: weights that do not fit the architecture, a tokenizer bigger than the vocabulary, unreadable or
wrong folders and unknown devices each end as one line before any scoring; a normal run shows no library warnings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from icl_eval.cli import main
from icl_eval.errors import IclEvalError
from icl_eval.devices import validate_device as parse_device
from icl_eval.models.hf import HFModel


def _copy(ckpt: Path, dst: Path) -> Path:
    shutil.copytree(ckpt, dst)
    return dst


def _rewrite_weights(folder: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    save_file(change(load_file(str(weights))), str(weights), metadata={"format": "pt"})
    return folder


def _load_error(path: Path | str, **kw) -> str:
    with pytest.raises(IclEvalError) as e:
        HFModel.load(str(path), device="cpu", **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


# --- weights that do not match the architecture -------------------------------------------------------------------


def test_a_missing_tensor_is_an_error_not_random_weights(tiny_checkpoint, tmp_path):
    ckpt = _rewrite_weights(_copy(tiny_checkpoint, tmp_path / "ckpt"), lambda sd: {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.weight"})
    message = _load_error(ckpt)
    assert "1 missing (transformer.h.1.mlp.c_fc.weight)" in message and "random" in message and str(ckpt) in message


def test_renamed_tensors_are_an_error_listing_a_few_names(tiny_checkpoint, tmp_path):
    ckpt = _rewrite_weights(_copy(tiny_checkpoint, tmp_path / "ckpt"), lambda sd: {"model." + k: v for k, v in sd.items()})
    message = _load_error(ckpt)
    assert "missing (transformer." in message and "unexpected (model.transformer." in message and ", ...)" in message


def test_an_unexpected_tensor_is_an_error(tiny_checkpoint, tmp_path):
    ckpt = _rewrite_weights(_copy(tiny_checkpoint, tmp_path / "ckpt"), lambda sd: {**sd, "transformer.h.7.mlp.c_fc.weight": torch.zeros(4, 4)})
    message = _load_error(ckpt)
    assert "1 unexpected (transformer.h.7.mlp.c_fc.weight)" in message and "does not use" in message


def test_weights_tied_by_design_may_be_absent_but_untied_ones_may_not(tmp_path):
    from safetensors import safe_open

    from icl_eval.models.tiny import build_tokenizer, save_tiny_checkpoint, tiny_llama

    tok = build_tokenizer()
    model = tiny_llama(len(tok), max_positions=64)
    assert model.config.tie_word_embeddings is False  # Llama keeps its own lm_head
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    HFModel.load(str(tmp_path / "llama"), device="cpu")  # complete: loads
    _rewrite_weights(tmp_path / "llama", lambda sd: {k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert "1 missing (lm_head.weight)" in _load_error(tmp_path / "llama")
    # GPT-2 ties lm_head to the input embeddings: its checkpoints hold no lm_head.weight, and that is fine.
    gpt2 = save_tiny_checkpoint(tmp_path / "gpt2", n_positions=64)
    with safe_open(str(gpt2 / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    HFModel.load(str(gpt2), device="cpu")


def test_mismatched_shapes_are_one_line(tiny_checkpoint, tmp_path):
    ckpt = _rewrite_weights(_copy(tiny_checkpoint, tmp_path / "ckpt"), lambda sd: {**sd, "transformer.h.0.attn.c_attn.weight": torch.zeros(3, 3)})
    assert "other shapes than config.json describes" in _load_error(ckpt)


# --- a vocabulary smaller than the tokenizer's ids ----------------------------------------------------------------


def test_a_tokenizer_bigger_than_the_vocabulary_is_refused_at_load(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    from icl_eval.models.tiny import tiny_gpt2

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    small = tmp_path / "small-vocab"
    n = len(tokenizer) - 40
    tiny_gpt2(n, n_positions=64).save_pretrained(small)
    for f in tiny_checkpoint.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special")):
            shutil.copy(f, small / f.name)
    message = _load_error(small)
    assert f"tokenizer has {len(tokenizer)} tokens" in message and f"vocab_size is {n}" in message
    # A config that claims enough rows while the embedding matrix has fewer (a model built in code) is caught too.
    model = tiny_gpt2(n, n_positions=64)
    model.config.vocab_size = len(tokenizer)
    with pytest.raises(IclEvalError, match=f"embedding matrix has only {n} rows"):
        HFModel(model, tokenizer, name="tiny")


# --- folders that cannot be read, or hold checkpoints ------------------------------------------------------------


def _deny(monkeypatch, denied: Path) -> int:
    """chmod the path to nothing (returns the old mode); root reads it anyway, so then os.access answers as for a user."""
    mode = denied.stat().st_mode
    os.chmod(denied, 0)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == denied else real(p, m, *a, **k))
    return mode


def test_an_unreadable_model_folder_says_permission_denied(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    mode = _deny(monkeypatch, ckpt)
    try:
        message = _load_error(ckpt)
    finally:
        os.chmod(ckpt, mode)
    assert "permission denied" in message and str(ckpt) in message and "No such file" not in message and "model_type" not in message


def test_an_unreadable_weights_file_says_permission_denied(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    mode = _deny(monkeypatch, weights)
    try:
        message = _load_error(ckpt)
    finally:
        os.chmod(weights, mode)
    assert "permission denied" in message and str(weights) in message


def test_a_folder_of_checkpoints_lists_them(tiny_checkpoint, tmp_path):
    runs = tmp_path / "runs"
    for step in ("step-1000", "step-2000"):
        _copy(tiny_checkpoint, runs / step)
    (runs / "logs").mkdir()
    message = _load_error(runs)
    assert "a folder of checkpoints" in message and "no config.json" in message and "step-1000, step-2000" in message and "logs" not in message


# --- devices ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,canonical", [("cpu", "cpu"), ("auto", "auto"), (" CPU ", "cpu")])
def test_parse_device_accepts(value, canonical):
    assert parse_device(value) == canonical


@pytest.mark.parametrize(
    "value,needles",
    [
        ("tpu9", ("--device tpu9", "use cpu, cuda, cuda:N, mps or auto")),
        ("gpu", ("--device gpu", "use --device cuda")),
        ("meta", ("--device meta", "holds no weights")),
        ("cpu:1", ("--device cpu:1", "use cpu, cuda")),
        ("cuda:x", ("--device cuda:x", "use cpu, cuda")),
        ("", ("--device ", "use cpu")),
    ],
)
def test_parse_device_refuses_unknown_devices_with_the_fix(value, needles):
    with pytest.raises(IclEvalError) as e:
        parse_device(value)
    for needle in needles:
        assert needle in str(e.value)


def test_cuda_without_cuda_and_an_index_past_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IclEvalError, match="--device cuda: no CUDA device is visible; use --device cpu or auto"):
        parse_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == "cuda:1" and parse_device("cuda") == "cuda"
    with pytest.raises(IclEvalError, match="only 2 CUDA device"):
        parse_device("cuda:2")


def test_mps_off_a_mac_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(IclEvalError, match="MPS backend is not available"):
        parse_device("mps")


def test_load_validates_the_device_before_reading_anything(tmp_path):
    with pytest.raises(IclEvalError, match="--device tpu9"):
        HFModel.load(str(tmp_path / "not-even-there-yet"), device="tpu9")


# --- no library warnings in a normal run --------------------------------------------------------------------------

WARN_GEN_TASK = """
name: echo_gen
output_type: generate
template: echo_gen.jinja
metrics: [exact_match]
max_new_tokens: 4
until: ["\\n"]
data:
  local: words.jsonl
"""


WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon", "peach", "mango", "guava"] * 2


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.filterwarnings("error")
def test_a_run_with_shared_prefixes_and_dropped_demonstrations_shows_no_library_warnings(tmp_path, monkeypatch, capsys):
    import transformers

    from icl_eval.models.tiny import save_tiny_checkpoint

    # A context as long as the tokenizer's model_max_length, as GPT-2's 1024 is: the 16-shot prompts must lose
    # demonstrations, so they are tokenized whole past that length first.
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", n_positions=128)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 128}))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "echo_gen.yaml").write_text(WARN_GEN_TASK)
    (tasks / "echo_gen.jinja").write_text("{% block input %}Repeat {{ word }}:{% endblock %}{% block target %}{{ word }}{% endblock %}")
    (tasks / "words.jsonl").write_text("".join(json.dumps({"word": w}) + "\n" for w in WORDS))

    extended = []
    real_extend = HFModel._extend_cache
    monkeypatch.setattr(HFModel, "_extend_cache", lambda self, *a: extended.append(1) or real_extend(self, *a))
    transformers.utils.logging.warning_once.cache_clear()  # a warning shown once per process must show here again
    collect = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            argv = [
                "run", "--model", str(ckpt), "--tasks", f"arithmetic_2da,{tasks / 'echo_gen.yaml'}", "--shots", "2,16",
                "--fewshot-mode", "fixed", "--limit", "4", "--data-dir", str(tasks), "--output", str(tmp_path / "out"), "--device", "cpu",
            ]
            assert main(argv) == 0
    finally:
        logger.removeHandler(collect)
    captured = capsys.readouterr()
    assert "lost demonstrations" in captured.out and "arithmetic_2da 16-shot: 4 prompts lost demonstrations" in captured.out
    assert extended, "the shared-prefix path ran"
    assert collect.messages == []
    for text in (captured.err, captured.out):
        assert "Warning" not in text and "longer than the specified maximum" not in text and "deprecated" not in text
