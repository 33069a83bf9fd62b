"""Every suite task end to end on a tiny random model: --limit 5 at 0, 1 and 3 shots, one run (model loaded once).

Generation tasks run from copies with max_new_tokens 2 (a random model seldom stops early; everything else in
the task is the built-in one), so the suite stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icl_eval import metrics
from icl_eval.cli import main
from icl_eval.registry import load_task
from tasks_inline_data import ALL_TASKS, short_generation_copies, write_inline_data

SHOTS = (0, 1, 3)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A tiny model gains nothing from a second thread, and on a shared 2-core machine the threads' spinning
    doubled this module's time; restored afterwards so other tests run as configured."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(checkpoint: Path, tasks: list[str], data_dir: Path, include: Path, out: Path, capsys) -> tuple[dict, Path]:
    argv = ["run", "--model", str(checkpoint), "--tasks", ",".join(tasks), "--shots", "0,1,3", "--limit", "5",
            "--data-dir", str(data_dir), "--include-path", str(include), "--output", str(out)]
    assert main(argv) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return json.loads(path.read_text()), path.parent


def _samples(run_dir: Path, task: str, k: int) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples" / f"{task}_{k}shot.jsonl").read_text().splitlines()]


def _check_run(res: dict, run_dir: Path, tasks: list[str], n: int) -> None:
    got = {(r["task"], r["shots"], r["metric"]): r for r in res["records"]}
    for task in tasks:
        cfg = load_task(task)
        for k in SHOTS:
            samples = _samples(run_dir, task, k)
            assert len(samples) == n
            for m in cfg.metrics:
                rec = got[(task, k, m)]
                assert rec["n"] == n
                # The record is the aggregate of the logged per-example items: any subset can be rescored.
                assert rec["value"] == pytest.approx(metrics.aggregate(m, [s["metrics"][metrics.item_field(m)] for s in samples])[0])
            if k:
                assert all(len(s["fewshot_ids"]) == k or res["tasks"][task]["truncation"][str(k)]["demos_dropped"] for s in samples)
    for task in tasks:
        if load_task(task).output_type == "multiple_choice":
            s = _samples(run_dir, task, 1)[0]
            cand = s["candidates"]
            assert len(cand) >= 2 and 0 <= s["gold"] < len(cand)
            assert {"text", "loglikelihood", "n_tokens", "n_chars", "is_greedy"} <= set(cand[0])
            assert set(s["predictions"]) == set(load_task(task).metrics)
        else:
            s = _samples(run_dir, task, 0)[0]
            assert {"generation", "generation_raw", "references"} <= set(s)
    for task in tasks:
        if "bleu" in load_task(task).metrics:
            assert res["tasks"][task]["sacrebleu"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
            assert "chrf" in res["tasks"][task]["sacrebleu"]


def test_every_task_end_to_end_on_inline_data(tiny_checkpoint, tmp_path, capsys):
    data = write_inline_data(tmp_path / "data")
    include = short_generation_copies(tmp_path / "short", max_new_tokens=2)
    res, run_dir = _run(tiny_checkpoint, ALL_TASKS, data, include, tmp_path / "out", capsys)
    _check_run(res, run_dir, ALL_TASKS, 4)  # the inline files hold 4 examples each
    # ARC's unconditional scores: the neutral context is shared, so equal answer texts score equally.
    arc = _samples(run_dir, "arc_easy", 0)
    unc = {c["text"]: c["uncond_loglikelihood"] for s in arc for c in s["candidates"]}
    assert len(unc) == 16 and all(v < 0 for v in unc.values())


def test_every_task_end_to_end_on_shared_data(tiny_checkpoint, shared, tmp_path, capsys):
    tasks = [t for t in ALL_TASKS if t != "storycloze"]  # StoryCloze's files are not redistributable
    include = short_generation_copies(tmp_path / "short", max_new_tokens=2)
    res, run_dir = _run(tiny_checkpoint, tasks, shared / "data", include, tmp_path / "out", capsys)
    _check_run(res, run_dir, tasks, 5)
    assert res["tasks"]["hellaswag"]["n_docs"] == 10042
