"""Typed run outputs: SampleLog/TaskSummary/RunResult write exactly what a run writes, RunReader reads it back,
and the metric facts readers use live in metrics.py."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icl_eval import metrics, rolling
from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationResult, LoglikelihoodResult, RollingResult
from icl_eval.results import Record, RunReader, RunResult, RunWriter, SampleLog, TaskSummary, samples_path


class Scripted:
    """Log-likelihoods from the context length; one example is NaN and one left-truncated; generation echoes."""

    max_length = 10**6

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def loglikelihood(self, requests, progress=None, on_result=None):
        out = []
        for r in requests:
            n = len(r.context)
            truncated, finite = r.context.endswith("w w w w w w "), not r.context.endswith("\n\nw w w w ")  # query 6-7; query 4
            out.append(LoglikelihoodResult(-float(n % 7 + 1), 1, len(r.continuation), n % 2 == 0, left_truncated=truncated, finite=finite))
        return out

    def generate(self, requests, progress=None):
        return [GenerationResult(f" x\nmore {i}", "x" if i % 2 else f"y{i}", 3) for i, _ in enumerate(requests)]


TASKS = {
    "ll": "output_type: loglikelihood\nmetrics: [acc, perplexity]\n",
    "mc": "output_type: multiple_choice\nmetrics: [acc, acc_norm, acc_uncond]\nchoices: '[answer, \"no\", \"maybe\"]'\ngold: '0'\nuncond_context: 'Answer:'\n",
    "gen": "output_type: generate\nmetrics: [exact_match, f1, bleu]\nuntil: ['\\n']\nmax_new_tokens: 5\n",
}


def _evaluator_samples(tmp_path: Path, kind: str) -> list[dict]:
    from icl_eval.evaluator import Settings, prepare, score_task
    from icl_eval.registry import load_task

    (tmp_path / f"{kind}.yaml").write_text(f"name: {kind}\ntemplate: {kind}.jinja\ndata:\n  local: d.jsonl\n" + TASKS[kind])
    block = "{% block input %}{{ text }}{% endblock %}" + ("" if kind == "mc" else "{% block target %} {{ answer }}{% endblock %}")
    (tmp_path / f"{kind}.jinja").write_text(block)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": "w " * i, "answer": "x"}) + "\n" for i in range(1, 8)))
    settings = Settings(shots=(1,), data_dir=str(tmp_path))
    run = score_task(prepare(load_task(str(tmp_path / f"{kind}.yaml")), settings), 1, Scripted(), settings)
    return [s.to_json() for s in run.samples]


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_a_sample_log_writes_exactly_what_the_evaluator_writes(tmp_path: Path, kind: str) -> None:
    samples = _evaluator_samples(tmp_path, kind)
    flags = {k for s in samples for k in ("nonfinite", "left_truncated", "predictions", "metrics") if k in s}
    assert flags >= ({"nonfinite", "left_truncated", "metrics"} if kind != "gen" else {"metrics"})
    for s in samples:
        log = SampleLog.from_json(s)
        assert list(log.to_json().items()) == list(s.items())  # same keys, same order, same values
        assert json.dumps(log.to_json()) == json.dumps(s)
    # The writer takes SampleLogs and dicts alike, byte for byte.
    a, b = RunWriter(tmp_path / "a", "r"), RunWriter(tmp_path / "b", "r")
    a.write_samples(kind, 1, samples)
    b.write_samples(kind, 1, [SampleLog.from_json(s) for s in samples])
    assert a.samples_path(kind, 1).read_bytes() == b.samples_path(kind, 1).read_bytes()
    assert a.samples_path(kind, 1) == samples_path(a.dir, kind, 1)
    read = RunReader(b.dir).samples(kind, 1)
    assert [s.to_json() for s in read] == samples


def test_sample_log_key_order_for_a_flagged_example() -> None:
    log = SampleLog("t", 0, 3, [1], "h", "c", " x", fields={"loglikelihood": math.nan, "n_tokens": 1}, left_truncated=True,
                    nonfinite=True, predictions={"acc": 0}, metrics={"acc": 1.0})
    assert list(log.to_json()) == ["task", "shots", "doc_id", "fewshot_ids", "prompt_hash", "context", "target",
                                   "loglikelihood", "n_tokens", "left_truncated", "nonfinite", "metrics"]
    assert log.to_json()["metrics"] == {}
    plain = SampleLog("t", 0, 3, fields={"gold": 1}, predictions={"acc": 1}, metrics={"acc": 1.0}).to_json()
    assert list(plain)[-3:] == ["gold", "predictions", "metrics"] and "left_truncated" not in plain and "nonfinite" not in plain


def _result() -> RunResult:
    tasks = {"t": TaskSummary("c" * 64, "h" * 64, "generate", 10, 5, "/data/t.jsonl", {"0": {"demos_dropped": 0}},
                              sacrebleu={"bleu": "sig"}, cache={"0": {"hits": 1, "misses": 4}})}
    return RunResult("r1", "2026-01-01T00:00:00+00:00", {"name": "m", "num_parameters": 7}, {"shots": [0]}, tasks,
                     [Record("t", 0, "bleu", 12.5, None, 5)], "2026-01-01T00:01:00+00:00", {"python": "3"})


def test_run_result_round_trips_through_the_reader(tmp_path: Path) -> None:
    result = _result()
    written = RunWriter(tmp_path, "r1").write_results(result)
    data = json.loads(written.read_text())
    # Today's layout: a task's keys in the order the evaluator filled them in, the optional ones last.
    assert list(data["tasks"]["t"]) == ["config_hash", "template_hash", "output_type", "n_docs", "n_evaluated", "data_source",
                                        "truncation", "sacrebleu", "cache"]
    assert data["records"] == [{"task": "t", "shots": 0, "metric": "bleu", "value": 12.5, "stderr": None, "n": 5}]
    back = RunReader(written.parent).result()
    assert back.tasks == result.tasks and back.records == result.records and back.environment == {"python": "3"}
    assert back.to_json() == data
    assert RunReader(written).result() == back  # a results file or its folder
    # The evaluator's plain dicts (main's form) still write as they are.
    result.tasks["u"] = {"config_hash": "x", "truncation": {}}
    assert result.to_json()["tasks"]["u"] == {"config_hash": "x", "truncation": {}}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable as JSON"),
    (json.dumps({"records": []}), "missing field 'model'"),
    (json.dumps({"model": {}, "records": []}), "missing field 'model.name'"),
    (json.dumps({"model": {"name": "m"}}), "missing field 'records'"),
    (json.dumps({"model": {"name": "m"}, "records": [{"task": "t", "shots": 0, "metric": "acc"}]}), "missing field 'records[0].value'"),
    (json.dumps({"model": {"name": "m"}, "records": [{"task": "t", "shots": 0, "metric": "acc", "value": "high"}]}), "'records[0].value' must be a number"),
])
def test_reader_names_what_is_wrong_with_a_results_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(IclEvalError, match=re.escape(message)):
        RunReader(tmp_path).result()


def test_reader_lists_samples_and_reads_old_item_names(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "r")
    writer.write_samples("a_b", 2, [{"task": "a_b", "shots": 2, "doc_id": 0, "metrics": {"perplexity": -1.5, "acc": 1.0}}])
    writer.write_samples("c", 0, [SampleLog("c", 0, "x", metrics={"loglikelihood": -2.0})])
    (writer.dir / "samples" / "notes.txt").write_text("not a log")
    reader = RunReader(writer.dir)
    assert list(reader.sample_files()) == [("a_b", 2), ("c", 0)]
    assert reader.items("a_b", 2) == {"0": {"perplexity": -1.5, "acc": 1.0}}
    assert reader.items("c", 0) == {'"x"': {"perplexity": -2.0}}
    assert reader.items("c", 1) is None
    with pytest.raises(IclEvalError, match="no sample logs for task 'c' at 1 shots"):
        reader.samples("c", 1)
    samples_path(writer.dir, "c", 0).write_text('{"doc_id": 1, "metrics": 3}\n')
    with pytest.raises(IclEvalError, match=r"c_0shot.jsonl:1: not a sample written by `icl-eval run`"):
        reader.samples("c", 0)


def test_metric_facts() -> None:
    assert [m for m, x in metrics.METRICS.items() if x.needs_uncond] == ["acc_uncond"]
    assert not any(metrics.tested_on_item_mean(m) for m in ("bleu", "chrf", *rolling.AGGREGATES))
    assert all(metrics.tested_on_item_mean(m) for m in ("acc", "perplexity", "acc_norm", "exact_match", "f1"))
    doc = RollingResult(-20.0, 10, 4, 16)
    for name in rolling.AGGREGATES:
        known = metrics.METRICS[name]
        assert not known.higher_is_better and known.output_types == ("loglikelihood_rolling",)
        assert known.item(doc) == list(rolling.metric_items(doc)[name])
        items = [known.item(doc), known.item(RollingResult(-30.0, 12, 5, 20))]
        assert metrics.aggregate(name, items) == rolling.AGGREGATES[name](items)
    assert metrics.lower_is_better("bits_per_byte") and metrics.lower_is_better("new_perplexity") and not metrics.lower_is_better("acc")
    result = LoglikelihoodResult(-2.5, 2, 4, True)
    assert metrics.loglikelihood_item("acc", result) == 1.0 and metrics.loglikelihood_item("perplexity", result) == -2.5
    with pytest.raises(ValueError):
        metrics.loglikelihood_item("acc_norm", result)
    with pytest.raises(ValueError):
        metrics.generation_item("bleu", "a", ["a"])
    assert metrics.generation_item("exact_match", "The Cat", ["cat"]) == 1.0
    assert metrics.generation_item("exact_match", "The Cat", ["cat"], normalizer="strip") == 0.0


def test_contamination_reads_runs_without_compare() -> None:
    code = ("import sys; import icl_eval.contamination.rescore, icl_eval.contamination.index, icl_eval.contamination.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('icl_eval.compare') or m == 'icl_eval.evaluator'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_rescore_scores_print_like_every_other_score() -> None:
    from icl_eval.contamination.rescore import rescore_table

    row = {"model": "", "task": "t", "shots": 0, "metric": "perplexity", "n_ngram": 13, "all": 2.5e-4, "n_all": 3,
           "clean": math.nan, "n_clean": 0, "dirty": 123456.0, "n_dirty": 3, "percent_clean": 0.0, "relative_change": math.nan}
    line = rescore_table([row]).splitlines()[-1]
    assert line == "| t | 0 | perplexity | 13 | 0.00025 | 1.235e+05 | 3 | — | 0 | 0.0 | — |"

