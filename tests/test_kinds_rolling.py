"""The loglikelihood_rolling kind end to end: a whole-document perplexity task (PTB's layout, written by the
test) through `icl-eval run`, checked against a plain one-window-at-a-time computation with the same model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from icl_eval.cli import main
from icl_eval.rolling import count_words_and_line_ends

TEXT = " the n stocks fell <unk> in early trading \n a spokesman said the company would n't comment \n" * 30


@pytest.fixture(scope="module")
def short_context_checkpoint(tmp_path_factory) -> Path:
    """A tiny random GPT-2 with a 64-token context, so the document needs many windows."""
    from icl_eval.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("rolling") / "ckpt", n_positions=64)


def _run(ckpt: Path, tmp_path: Path, capsys, *extra: str) -> tuple[dict, list[dict]]:
    (tmp_path / "data" / "ptb").mkdir(parents=True)
    (tmp_path / "data" / "ptb" / "ptb.test.txt").write_text(TEXT)
    argv = ["run", "--model", str(ckpt), "--tasks", "ptb", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *extra]
    assert main(argv) == 0
    results = Path(capsys.readouterr().out.strip().splitlines()[-1])
    samples = [json.loads(line) for line in (results.parent / "samples" / "ptb_0shot.jsonl").read_text().splitlines()]
    return json.loads(results.read_text()), samples


def _plain_sum(ckpt: Path, text: str) -> tuple[float, int]:
    """Every token scored once, each window forwarded on its own: the first after the EOS token, each later one
    reading the full context before the tokens it scores (lm-eval's disjoint rolling windows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    ids = tok(text, add_special_tokens=False).input_ids
    window = model.config.n_positions
    stream = [tok.eos_token_id, *ids]
    total, start = 0.0, 0
    with torch.no_grad():
        while start < len(ids):
            end = min(start + window, len(ids))
            read = stream[max(0, end - window) : end]  # the tokens before each scored token, at most `window`
            logits = model(torch.tensor([read])).logits[0].double().log_softmax(-1)  # exact over the float32 logits
            scored = ids[start:end]
            first = len(read) - len(scored)
            total += sum(logits[first + j, t].item() for j, t in enumerate(scored))
            start = end
    return total, len(ids)


def test_ptb_scores_the_whole_document_once_per_token(short_context_checkpoint, tmp_path, capsys):
    result, samples = _run(short_context_checkpoint, tmp_path, capsys, "--no-cache")
    (sample,) = samples  # the whole file is one document
    expected, n_tokens = _plain_sum(short_context_checkpoint, TEXT)
    assert sample["n_tokens"] == n_tokens > 3 * 64  # several windows
    assert sample["loglikelihood"] == pytest.approx(expected, abs=1e-4)
    assert sample["n_words"] == count_words_and_line_ends(TEXT) == 18 * 30
    assert result["tasks"]["ptb"]["seconds"]["0"] > 0  # each task and K is timed
    records = {r["metric"]: r["value"] for r in result["records"]}
    assert set(records) == {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"}
    assert records["word_perplexity"] == pytest.approx(math.exp(-expected / (18 * 30)), rel=1e-6)
    assert records["bits_per_byte"] == pytest.approx(-expected / len(TEXT.encode()) / math.log(2), rel=1e-6)


def test_rolling_responses_are_cached_and_reused(short_context_checkpoint, tmp_path, capsys):
    first, _ = _run(short_context_checkpoint, tmp_path, capsys)
    assert first["tasks"]["ptb"]["cache"]["0"] == {"hits": 0, "misses": 1}
    argv = ["run", "--model", str(short_context_checkpoint), "--tasks", "ptb", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    again = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert again["tasks"]["ptb"]["cache"]["0"] == {"hits": 1, "misses": 0}
    assert again["records"] == first["records"]


def test_demonstrations_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from icl_eval.models.hf import HFModel

    monkeypatch.setattr(HFModel, "load", classmethod(lambda *a, **k: pytest.fail("the model must not load")))
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(TEXT)
    assert main(["run", "--model", "x", "--tasks", "ptb", "--shots", "1", "--data-dir", str(tmp_path)]) == 2
    assert "takes at most 0 demonstrations" in capsys.readouterr().err


def test_a_shot_list_runs_a_zero_shot_only_task_at_zero(short_context_checkpoint, tmp_path, capsys):
    result, _ = _run(short_context_checkpoint, tmp_path, capsys, "--no-cache", "--shots", "0,1")
    assert {r["shots"] for r in result["records"]} == {0}


def test_with_other_tasks_a_zero_shot_only_task_is_skipped_at_one_shot(short_context_checkpoint, tmp_path, capsys):
    (tmp_path / "data" / "ptb").mkdir(parents=True)
    (tmp_path / "data" / "ptb" / "ptb.test.txt").write_text(TEXT)
    argv = ["run", "--model", str(short_context_checkpoint), "--tasks", "ptb,arithmetic_2da", "--shots", "1", "--limit", "3",
            "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--no-cache"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped: --shots 1: task 'ptb'" in out
    result = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert {r["task"] for r in result["records"]} == {"arithmetic_2da"}
