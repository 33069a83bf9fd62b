"""`icl-eval` end to end on a tiny checkpoint: run, tasks, prompt, validate, user tasks, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icl_eval.cli import main

USER_TASK = """
name: my_echo
output_type: loglikelihood
template: echo.jinja
metrics: [acc, perplexity]
fewshot_delimiter: "\\n"
data:
  local: echo.jsonl
"""
USER_TEMPLATE = "{% block input %}Say {{ word }}:{% endblock %}{% block target %}{{ word }}{% endblock %}"


@pytest.fixture()
def user_task_dir(tmp_path) -> Path:
    (tmp_path / "my_echo.yaml").write_text(USER_TASK)
    (tmp_path / "echo.jinja").write_text(USER_TEMPLATE)
    (tmp_path / "echo.jsonl").write_text("".join(json.dumps({"word": w}) + "\n" for w in ["apple", "pear", "plum", "fig"]))
    return tmp_path


def test_run_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2da,arithmetic_1dc", "--shots", "0,1,3", "--limit", "6", "--output", str(out), "--batch-size", "4"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results_path = Path(lines[-1])
    assert results_path.name == "results.json" and results_path.parent.parent == out
    assert any("a seeded random subset of 6 of 2000 examples" in line for line in lines)
    res = json.loads(results_path.read_text())
    assert res["model"]["num_parameters"] > 0 and res["settings"]["bos_policy"] == "tokenizer" and res["settings"]["limit"] == 6
    assert res["started_at"] and res["finished_at"] and res["tasks"]["arithmetic_2da"]["config_hash"]
    assert {(r["task"], r["shots"]) for r in res["records"]} == {(t, k) for t in ("arithmetic_2da", "arithmetic_1dc") for k in (0, 1, 3)}
    assert all(r["metric"] == "acc" and r["n"] == 6 for r in res["records"])
    samples = [json.loads(x) for x in (results_path.parent / "samples/arithmetic_2da_3shot.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    s = samples[0]
    assert len(s["fewshot_ids"]) == 3 and s["doc_id"] not in s["fewshot_ids"]
    assert {"task", "shots", "doc_id", "prompt_hash", "target", "loglikelihood", "n_tokens", "is_greedy", "metrics"} <= set(s)
    # The table's value is the mean of the per-example items in the log.
    rec = next(r for r in res["records"] if r["task"] == "arithmetic_2da" and r["shots"] == 3)
    assert rec["value"] == pytest.approx(sum(x["metrics"]["acc"] for x in samples) / 6)


def test_batch_size_does_not_change_results(tiny_checkpoint, tmp_path, capsys):
    logs = []
    for bs in ("1", "8", "auto"):
        main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_3ds", "--shots", "2", "--limit", "10", "--output", str(tmp_path / bs), "--batch-size", bs])
        run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
        logs.append([json.loads(x) for x in (run_dir / "samples/arithmetic_3ds_2shot.jsonl").read_text().splitlines()])
    for other in logs[1:]:
        for a, b in zip(logs[0], other):
            assert a["doc_id"] == b["doc_id"] and a["is_greedy"] == b["is_greedy"]
            assert abs(a["loglikelihood"] - b["loglikelihood"]) < 1e-4


def test_user_task_by_path_and_include_path(tiny_checkpoint, user_task_dir, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", str(user_task_dir / "my_echo.yaml"), "--shots", "1", "--data-dir", str(user_task_dir), "--output", str(tmp_path)]) == 0
    res = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert {r["metric"] for r in res["records"]} == {"acc", "perplexity"}
    assert main(["tasks", "--include-path", str(user_task_dir)]) == 0
    assert "my_echo" in capsys.readouterr().out
    assert main(["prompt", "my_echo", "--shots", "2", "--index", "1", "--include-path", str(user_task_dir), "--data-dir", str(user_task_dir)]) == 0
    out = capsys.readouterr().out
    assert "Say pear:" in out and out.count("Say ") >= 3


def test_validate(user_task_dir, capsys):
    assert main(["validate", str(user_task_dir / "my_echo.yaml"), "--data-dir", str(user_task_dir)]) == 0
    captured = capsys.readouterr()
    assert "ok:" in captured.err and "Say apple:" in captured.out


def test_tasks_lists_everything(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("arithmetic_2da", "arithmetic_1dc", "lambada", "lambada_cloze"):
        assert name in out
    assert "EleutherAI/lambada_openai" in out and "loglikelihood" in out


def test_prompt_is_printed_verbatim(capsys):
    assert main(["prompt", "arithmetic_2da", "--shots", "0", "--index", "0"]) == 0
    out = capsys.readouterr().out
    assert "\n\nQ: What is " in out and "?\n\nA:\n--- continuation ---\n " in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--model", "m", "--tasks", "arithmetc_2da"], "did you mean arithmetic_2da"),
        (["run", "--model", "m", "--tasks", "arithmetic_2da", "--shots", "0,x"], "--shots"),
        (["run", "--model", "m", "--tasks", "arithmetic_2da", "--limit", "0"], "--limit 0"),
        (["run", "--model", "./no/such/dir", "--tasks", "arithmetic_2da"], "no such folder"),
        (["run", "--model", "m", "--tasks", "arithmetic_2da", "--batch-size", "zero"], "--batch-size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl-eval: error:") and needle in err and "\n" not in err and "Traceback" not in err


def test_lambada_end_to_end_on_shared_data(tiny_checkpoint, shared, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", "lambada,lambada_cloze", "--shots", "0,1", "--limit", "5", "--data-dir", str(shared / "data"), "--output", str(tmp_path)]) == 0
    res = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    ppl = [r for r in res["records"] if r["metric"] == "perplexity"]
    assert len(ppl) == 4 and all(r["value"] > 1 for r in ppl)


def test_several_shot_counts_load_model_and_data_once(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from icl_eval import evaluator
    from icl_eval.models.hf import HFModel

    calls = {"data": 0, "model": 0}
    real_source, real_load = evaluator.load_source, HFModel.load.__func__

    def counting_source(*a, **k):
        calls["data"] += 1
        return real_source(*a, **k)

    def counting_load(cls, *a, **k):
        calls["model"] += 1
        return real_load(cls, *a, **k)

    monkeypatch.setattr(evaluator, "load_source", counting_source)
    monkeypatch.setattr(HFModel, "load", classmethod(counting_load))
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2ds", "--shots", "0,1,2,3", "--limit", "3", "--output", str(tmp_path)]) == 0
    assert calls == {"data": 1, "model": 1}


# A child that runs the command's entry point after planting three witnesses: an atexit handler, an object whose
# finaliser runs only when the interpreter tears its modules down, and (with a thread) a non-daemon thread's write.
ENTRY_CHILD = """
import atexit, os, sys, threading, time
from pathlib import Path
class Witness:
    def __del__(self):
        os.write(1, b"teardown ran\\n")  # not print(): sys.stdout may be gone by then
witness = Witness()
atexit.register(lambda: print("atexit ran", flush=True))
mode, marker = sys.argv[1], Path(sys.argv[2])
def finish_after_main():  # still running when main() returns, however long that takes
    while threading.main_thread().is_alive():
        time.sleep(0.01)
    marker.write_text("done")
if mode == "thread":
    threading.Thread(target=finish_after_main).start()
sys.argv = ["icl-eval", "tasks", "--no-such-flag"]
from icl_eval.cli import entry
print("before", flush=True)
entry()
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_the_command_skips_the_interpreter_teardown_but_not_atexit_or_work_in_flight(tmp_path, mode):
    import subprocess
    import sys

    marker = tmp_path / "written"
    proc = subprocess.run([sys.executable, "-c", ENTRY_CHILD, mode, str(marker)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr  # main()'s exit code for a usage error survives the quick exit
    assert "icl-eval: error:" in proc.stderr and "atexit ran" in proc.stdout
    if mode == "plain":
        assert "teardown ran" not in proc.stdout  # modules were not unloaded one by one
    else:  # a non-daemon thread still running: the ordinary exit, which waits for it
        assert marker.read_text() == "done" and "teardown ran" in proc.stdout


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `icl-eval tasks | head -1`, made certain: the reading end is closed before the command writes a byte.
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "icl_eval", "tasks"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
