"""What a run reads and writes: checks before the model loads, full sample logs, provenance, file modes, paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icl_eval import metrics
from icl_eval.cli import main
from icl_eval.devices import check_device
from icl_eval.errors import IclEvalError
from icl_eval.evaluator import Settings, prepare, score_task
from icl_eval.prompts import prompt_hash
from icl_eval.provenance import git_state
from icl_eval.registry import load_task
from icl_eval.requests import GenerationResult, LoglikelihoodResult
from icl_eval.results import RunWriter, atomic_write
from fakes import ScriptedModel
from tasks_inline_data import write_inline_data

from test_errors import TASK, TEMPLATE


def write_task(d: Path, n_docs: int = 5) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "t.yaml").write_text(TASK)
    (d / "t.jinja").write_text(TEMPLATE)
    (d / "t.jsonl").write_text("".join(json.dumps({"q": f"what is {i} plus 1?", "a": str(i + 1)}) + "\n" for i in range(n_docs)))
    return d / "t.yaml"


def run_argv(d: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(ckpt), "--tasks", str(write_task(d)), "--data-dir", str(d), "--output", str(d / "out"), *extra]


def last_line_path(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


# --- the device validator ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,cuda,mps", [("auto", 0, False), ("cpu", 0, False), ("cuda", 1, False), ("cuda:1", 2, False), ("mps", 0, True)])
def test_devices_this_machine_has_pass(value, cuda, mps):
    assert check_device(value, cuda, mps) == value


@pytest.mark.parametrize(
    "value,cuda,mps,needle",
    [
        ("tpu9", 1, False, "--device tpu9: not a device icl-eval can run on; use cpu, cuda, cuda:N, mps or auto"),
        ("gpu", 1, False, "--device gpu: not a device icl-eval can run on"),
        ("meta", 1, False, "--device meta: not a device icl-eval can run on"),
        ("cuda:", 1, False, "not a device icl-eval can run on"),
        ("cpu:1", 1, False, "not a device icl-eval can run on"),
        ("cuda", 0, False, "--device cuda: no CUDA device is visible; use --device cpu or auto"),
        ("cuda:0", 0, False, "no CUDA device is visible"),
        ("cuda:2", 2, False, "--device cuda:2: only 2 CUDA device(s) are visible (cuda:0 to cuda:1)"),
        ("mps", 0, False, "--device mps: Apple's MPS backend is not available"),
    ],
)
def test_devices_this_machine_lacks_are_one_line(value, cuda, mps, needle):
    with pytest.raises(IclEvalError) as e:
        check_device(value, cuda, mps)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- usage errors: one prefix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["tasks", "--data-dir", "X"], ("unrecognized arguments: --data-dir X", "see `icl-eval tasks --help`")),
        (["run", "--tasks", "t"], ("the following arguments are required: --model", "see `icl-eval run --help`")),
        ([], ("the following arguments are required: command", "see `icl-eval --help`")),
        (["nosuchcommand"], ("invalid choice: 'nosuchcommand'",)),
        (["prompt", "t", "--shots", "two"], ("--shots: invalid int value: 'two'", "see `icl-eval prompt --help`")),
    ],
)
def test_usage_errors_carry_the_prefix_once(argv, needles, capsys):
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("icl-eval: error: ") and not line.startswith("icl-eval: error: icl-eval"), line
    for needle in needles:
        assert needle in line


# --- checks made before the model loads --------------------------------------------------------------------------


@pytest.fixture()
def no_model_load(monkeypatch):
    from icl_eval.models.hf import HFModel

    def refuse(cls, *a, **k):
        pytest.fail("the model was loaded before a check that needs no model")

    monkeypatch.setattr(HFModel, "load", classmethod(refuse))


def _sparse_template(d: Path) -> None:
    # Doc 3 lacks the field the template reads: found by rendering every evaluated document up front.
    docs = [{"q": f"q{i}", "a": "x"} for i in range(5)]
    del docs[3]["q"]
    (d / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    (d / "t.jinja").write_text("{% block input %}Q: {{ q.upper() }}{% endblock %}{% block target %}{{ a }}{% endblock %}")


def _bad_contamination(d: Path) -> None:
    (d / "contamination.json").write_text("{not json")


EARLY = [
    ("data-dir-wrong", lambda d, c: run_argv(d, c) [:-2] + ["--data-dir", str(d / "nowhere"), "--output", str(d / "out")], (), ("no data for task 't'", "nowhere", "t.jsonl", "--data-dir")),
    ("shots-over-pool", lambda d, c: run_argv(d, c, "--shots", "0,5"), (), ("--shots 5 is larger than the few-shot pool (4 examples)",)),
    ("template-fails-on-a-later-doc", lambda d, c: run_argv(d, c), (_sparse_template,), ("t.jinja", "doc 3", "undefined")),
    ("device-unknown", lambda d, c: run_argv(d, c, "--device", "tpu9"), (), ("--device tpu9: not a device icl-eval can run on; use cpu, cuda, cuda:N, mps or auto",)),
    ("device-gpu", lambda d, c: run_argv(d, c, "--device", "gpu"), (), ("--device gpu: not a device icl-eval can run on",)),
    ("device-meta", lambda d, c: run_argv(d, c, "--device", "meta"), (), ("--device meta: not a device icl-eval can run on",)),
    ("output-under-a-file", lambda d, c: run_argv(d, c)[:-1] + [str(d / "t.yaml" / "out")], (), ("--output", "choose a writable --output")),
    ("output-empty", lambda d, c: run_argv(d, c)[:-1] + [""], (), ("--output ''", "give a folder")),
    ("contamination-report-bad", lambda d, c: run_argv(d, c, "--contamination", str(d / "contamination.json")), (_bad_contamination,), ("contamination.json",)),
]


@pytest.mark.parametrize("make_argv,setup,needles", [c[1:] for c in EARLY], ids=[c[0] for c in EARLY])
def test_checks_that_need_no_model_run_before_it_loads(make_argv, setup, needles, no_model_load, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = make_argv(tmp_path, tiny_checkpoint)
    for step in setup:
        step(tmp_path)
    assert main(argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("icl-eval")]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not [p for p in (tmp_path / "out").glob("*") if p.name != ".cache"], "a failed check left a run folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t.yaml", "t.jinja", "t.jsonl", *(["contamination.json"] if setup == (_bad_contamination,) else [])])


def test_prepared_data_is_not_loaded_again_by_the_evaluation(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from icl_eval import evaluator

    calls = []
    real = evaluator.load_source
    monkeypatch.setattr(evaluator, "load_source", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(run_argv(tmp_path, tiny_checkpoint, "--shots", "0,1", "--no-cache")) == 0
    assert len(calls) == 1


# --- what the sample logs hold ---------------------------------------------------------------------------------


def Scripted() -> ScriptedModel:
    """Log-likelihood = -len(continuation); a generation with padding and a stop sequence around the answer."""
    return ScriptedModel(reply=lambda c: " Paris ", raw=lambda c: " Paris \nQ: next")


@pytest.fixture(scope="module")
def inline_root(tmp_path_factory):
    return write_inline_data(tmp_path_factory.mktemp("inline_io"))


def _samples(task: str, root: Path, shots: int = 1) -> tuple:
    prep = prepare(load_task(task), Settings(shots=(shots,), data_dir=str(root)))
    return prep, [s.to_json() for s in score_task(prep, shots, Scripted(), Settings(shots=(shots,), data_dir=str(root))).samples]


def test_full_multiple_choice_log_holds_the_context_and_each_scored_continuation(inline_root):
    prep, samples = _samples("arc_easy", inline_root)
    task = prep.task
    for s in samples:
        query = prep.example(s["doc_id"])
        assert s["context"].endswith(query.input) and prompt_hash(s["context"], s["target"]) == s["prompt_hash"]
        assert [c["text"] for c in s["candidates"]] == [task.target_delimiter + choice for choice in query.choices]
        assert all("context" not in c for c in s["candidates"])  # one context for every candidate, logged once
        assert s["candidates"][s["gold"]]["text"] == s["target"]


def test_partial_multiple_choice_log_holds_each_candidates_own_context(inline_root):
    prep, samples = _samples("winogrande", inline_root)
    for s in samples:
        query = prep.example(s["doc_id"])
        contexts = [c["context"] for c in s["candidates"]]
        assert [ctx.endswith(choice) for ctx, choice in zip(contexts, query.choices)] == [True] * len(query.choices)
        assert {c["text"] for c in s["candidates"]} == {s["target"]} and s["target"].startswith(prep.task.target_delimiter)
        assert contexts[s["gold"]] == s["context"]


def test_generation_log_holds_the_request_and_the_scored_prediction(inline_root):
    prep, samples = _samples("triviaqa", inline_root)
    for s in samples:
        assert s["context"].endswith("A:") and s["until"] == ["\n"] and s["max_new_tokens"] == prep.task.max_new_tokens
        assert s["generation_raw"] == " Paris \nQ: next" and s["generation"] == "Paris"
    paris = next(s for s in samples if s["references"] == ["Paris"])
    assert paris["metrics"]["exact_match"] == 1.0


# --- results.json: provenance ---------------------------------------------------------------------------------


def test_results_record_versions_commit_and_command_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["icl-eval", "run", "--as-typed"])
    assert main(run_argv(tmp_path, tiny_checkpoint, "--no-cache")) == 0
    env = json.loads(last_line_path(capsys).read_text())["environment"]
    assert env["argv"] == ["icl-eval", "run", "--as-typed"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    import torch
    import transformers

    assert env["libraries"]["torch"] == torch.__version__ and env["libraries"]["transformers"] == transformers.__version__
    assert {"datasets", "accelerate", "sacrebleu"} <= set(env["libraries"])
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)


def test_git_state_fails_soft_and_never_reports_another_repository(tmp_path):
    assert git_state(tmp_path / "icl_eval") is None  # no repository at all
    pkg = tmp_path / "project" / ".venv" / "site-packages" / "icl_eval"
    pkg.mkdir(parents=True)
    if subprocess.run(["git", "init", "-q", str(tmp_path / "project")], capture_output=True).returncode != 0:
        pytest.skip("git not available")
    assert git_state(pkg) is None  # installed inside someone else's checkout


# --- files: modes, temporary files, paths ------------------------------------------------------------------------


def test_outputs_follow_the_umask(tiny_checkpoint, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(run_argv(tmp_path, tiny_checkpoint, "--no-cache")) == 0
    finally:
        os.umask(old)
    results = last_line_path(capsys)
    assert results.stat().st_mode & 0o777 == 0o644
    assert (results.parent / "samples" / "t_0shot.jsonl").stat().st_mode & 0o777 == 0o644


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write(target, "old\n")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"] and target.read_text() == "old\n"


def test_an_output_path_that_is_not_utf8_works(tiny_checkpoint, tmp_path, capsys):
    out = os.fsdecode(os.fsencode(tmp_path) + b"/out\xff")
    argv = run_argv(tmp_path, tiny_checkpoint)[:-1] + [out]
    assert main(argv) == 0
    run_dirs = [p for p in Path(out).iterdir() if p.name != ".cache"]
    (run_dir,) = run_dirs
    res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert res["settings"]["cache"] == str(Path(out) / ".cache" / "responses.sqlite")  # the escape reads back as the path
    assert not [p for p in Path(out).rglob("*.tmp")]
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == str(run_dir / "results.json").replace("\udcff", "\\udcff")  # escaped, the output stays UTF-8


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "../../../x"])
def test_a_samples_path_outside_the_run_folder_is_refused(name, tmp_path):
    writer = RunWriter(tmp_path / "out", "run1")
    with pytest.raises(IclEvalError, match="outside the run folder"):
        writer.write_samples(name, 0, [{"a": 1}])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/run1", "out/run1/samples"]


def test_a_task_name_inside_the_run_folder_is_written(tmp_path):
    writer = RunWriter(tmp_path / "out", "run1")
    assert writer.write_samples("t", 2, [{"a": 1}]) == writer.dir / "samples" / "t_2shot.jsonl"


# --- computed work is written before what can fail -----------------------------------------------------------


def test_samples_are_written_before_the_aggregation_that_fails(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def failing(metric, items):
        raise IclEvalError(f"cannot aggregate {metric} (simulated)")

    monkeypatch.setattr(metrics, "aggregate", failing)
    assert main(run_argv(tmp_path, tiny_checkpoint, "--no-cache")) == 2
    assert "cannot aggregate acc (simulated)" in capsys.readouterr().err
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.name != ".cache"]
    samples = [json.loads(x) for x in (run_dir / "samples" / "t_0shot.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and all("acc" in s["metrics"] for s in samples)


def test_samples_are_written_when_scoring_an_example_fails(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def failing(metric, out):
        raise IclEvalError("cannot score (simulated)")

    monkeypatch.setattr(metrics, "loglikelihood_item", failing)
    assert main(run_argv(tmp_path, tiny_checkpoint, "--no-cache")) == 2
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.name != ".cache"]
    samples = [json.loads(x) for x in (run_dir / "samples" / "t_0shot.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and all("loglikelihood" in s and "metrics" not in s for s in samples)


# --- icl-eval prompt ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,shots", [("arithmetic_2da", 0), ("arc_easy", 1), ("triviaqa", 1)])
def test_prompt_output_ends_with_a_newline(task, shots, inline_root, capsys):
    assert main(["prompt", task, "--shots", str(shots), "--data-dir", str(inline_root)]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_a_left_truncated_context_is_flagged_in_its_sample(tiny_checkpoint, tmp_path, capsys):
    d = tmp_path
    write_task(d)
    (d / "t.jsonl").write_text("".join(json.dumps({"q": "word " * 700, "a": "yes"}) + "\n" for _ in range(2)) + json.dumps({"q": "short", "a": "yes"}) + "\n")
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", str(d / "t.yaml"), "--data-dir", str(d), "--output", str(d / "out"), "--no-cache"]) == 0
    samples = [json.loads(x) for x in (last_line_path(capsys).parent / "samples" / "t_0shot.jsonl").read_text().splitlines()]
    assert [s.get("left_truncated", False) for s in samples] == [True, True, False]
