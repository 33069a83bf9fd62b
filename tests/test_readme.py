"""The README says what the project does: its test command is CI's, its worked example is the demo, its data
paths are the tasks' paths. Each test reads the README itself, so a drifting README fails here."""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from pathlib import Path

import pytest
import yaml

from icl_eval.cli import main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _bash_block_after(heading_text: str) -> str:
    """The first ```bash block after the line containing heading_text."""
    start = README.index(heading_text)
    block = re.search(r"```bash\n(.*?)```", README[start:], re.S)
    assert block, f"no bash block after {heading_text!r}"
    return block.group(1).strip()


def _options(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_readme_test_command_is_what_ci_runs():
    ci_lines = [line for line in (REPO / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [_bash_block_after("Run the tests")]


def test_every_task_data_path_is_in_the_readme():
    """Each local path a shipped task reads is named in the README, so a user knows where to put the file."""
    missing = []
    for path in sorted((REPO / "tasks").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        for section in ("data", "fewshot"):
            src = cfg.get(section) or {}
            for key in ("local", *(src.get("line_fields") or {}).values()) if src.get("local") else ():
                local = src["local"] if key == "local" else key
                # A parallel pair (wmt/en-fr/newstest2014.{en,fr}) is listed as its two files.
                m = re.fullmatch(r"(.*)\{(\w+),(\w+)\}", local)
                names = [m.group(1) + m.group(2), m.group(1) + m.group(3)] if m else [local]
                missing += [f"{path.name}: {n}" for n in names if f"`{n}`" not in README]
    assert not missing, "README's Data section lacks: " + "; ".join(missing)


def _demo_and_results(argv, capsys) -> tuple[str, dict, Path]:
    assert main(["demo", *argv]) == 0
    out = capsys.readouterr().out
    results_path = Path(out.strip().splitlines()[-1])
    return out, json.loads(results_path.read_text()), results_path


def test_demo_runs_the_readme_worked_example(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "lambada").mkdir(parents=True)
    passages = [f"passage {i} tells of the {w} and ends on the word {w}" for i, w in enumerate(["fox", "dog", "owl", "cat", "elk"] * 8)]
    (data / "lambada/lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in passages))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.delenv("ICL_EVAL_DATA_DIR", raising=False)

    out, res, results_path = _demo_and_results(["--tiny", "--data-dir", str(data)], capsys)
    readme_cmd = next(line for line in README.splitlines() if line.startswith("icl-eval run --model"))
    demo_cmd = next(line for line in out.splitlines() if line.startswith("running: icl-eval run")).removeprefix("running: ")
    for option in ("--tasks", "--shots", "--limit"):
        assert _options(demo_cmd)[option] == _options(readme_cmd)[option], option
    assert res["settings"]["tasks"] == ["arithmetic_2da", "lambada"] and res["settings"]["shots"] == [0, 1, 32]
    assert {(r["task"], r["shots"]) for r in res["records"]} == {(t, k) for t in ("arithmetic_2da", "lambada") for k in (0, 1, 32)}
    # Its own folder, named in the README, never results/: `icl-eval compare results/` must not pick it up.
    assert results_path.parent.parent == tmp_path / "tmp" / "icl-eval-demo"
    assert "`icl-eval-demo`" in README


def test_demo_without_lambada_data_runs_arithmetic_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ICL_EVAL_DATA_DIR", raising=False)
    out, res, _ = _demo_and_results(["--tiny", "--output", str(tmp_path / "out")], capsys)
    assert "lambada left out: no data for task 'lambada'" in out
    assert res["settings"]["tasks"] == ["arithmetic_2da"]
    assert res["tasks"]["arithmetic_2da"]["data_source"] == "generated:arithmetic"
    assert {r["shots"] for r in res["records"]} == {0, 1, 32}


def _demo_command(monkeypatch, capsys, *argv: str) -> tuple[str, list[str]]:
    """What `icl-eval demo` prints and the run it starts (not run: the model choice is what is tested here)."""
    started = []
    monkeypatch.setattr("icl_eval.cli.cmd_run", lambda args: started.append(args) or 0)
    assert main(["demo", *argv]) == 0
    (run,) = started
    return capsys.readouterr().out, run


def test_demo_runs_the_installed_real_model_on_three_tasks(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr("icl_eval.models.gguf.installed_smollm2", lambda: fake)
    monkeypatch.delenv("ICL_EVAL_DATA_DIR", raising=False)
    out, run = _demo_command(monkeypatch, capsys, "--data-dir", str(tmp_path / "no-data"))
    assert run.model == str(fake) and run.shots == "0,1" and run.limit == 50
    assert run.tasks == "arithmetic_2da"  # lambada and hellaswag have no data here and no generator
    assert "lambada left out" in out and "hellaswag left out" in out and "DEMO: a real pretrained model" in out


def test_demo_uses_the_hub_model_when_reachable_and_the_tiny_one_otherwise(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("icl_eval.models.gguf.installed_smollm2", lambda: None)
    monkeypatch.setattr("icl_eval.hub.hub_reachable", lambda: True)
    out, run = _demo_command(monkeypatch, capsys, "--output", str(tmp_path))
    assert run.model == "HuggingFaceTB/SmolLM2-135M" and "from the hub" in out
    monkeypatch.setattr("icl_eval.hub.hub_reachable", lambda: False)
    out, run = _demo_command(monkeypatch, capsys, "--output", str(tmp_path))
    assert "No real model at hand" in out and "RANDOM weights" in out and run.shots == "0,1,32"


@pytest.mark.parametrize("pattern", [r"this session", r"the issue", r"issue #?\d", r"we were told", r"lent to this task", r"our machines"])
def test_docs_do_not_speak_of_internal_process(pattern):
    """Readers outside the team know nothing of how the work was organised."""
    texts = {"README.md": README, "benchmarks/README.md": (REPO / "benchmarks/README.md").read_text(), "docs/speed.md": (REPO / "docs/speed.md").read_text()}
    assert not [name for name, text in texts.items() if re.search(pattern, text, re.I)]
