"""A third-party plugin end to end: a distribution written in tmp_path adds a task (YAML + template), a metric, a
task kind and a model backend through entry points, and `icl-eval run --backend` evaluates its task with them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from icl_eval import plugins
from icl_eval.cli import main

from test_plugins import distribution

FILES = {
    "icl_chars/__init__.py": """
        from pathlib import Path

        TASKS = Path(__file__).parent / "tasks"
    """,
    "icl_chars/kind.py": """
        from icl_eval import metrics
        from icl_eval.kinds.loglikelihood import Loglikelihood


        class PerCharacter(Loglikelihood):
            \"\"\"A log-likelihood task scored per character of its target; logs the target's length too.\"\"\"

            name = "per_character"

            def log(self, task, prompt, query, results):
                fields, finite = super().log(task, prompt, query, results)
                return {**fields, "target_chars": len(prompt.target)}, finite

            def score(self, task, queries, results, samples):
                return [None if s.nonfinite else {m: metrics.METRICS[m].item(r[0]) for m in task.metrics} for s, r in zip(samples, results)]
    """,
    "icl_chars/metric.py": """
        from icl_eval.metrics import mean_stderr


        class LogprobPerChar:
            higher_is_better = True
            output_types = ("per_character",)
            corpus = False
            item_mean = True

            def item(self, result):
                return result.loglikelihood / max(result.n_chars, 1)

            def aggregate(self, items):
                return mean_stderr(items)


        METRIC = LogprobPerChar()
    """,
    "icl_chars/backend.py": """
        from icl_eval.models.hf import HFModel

        CALLS = []


        def load(model, **options):
            CALLS.append(model)
            return HFModel.load(model, **options)
    """,
    "icl_chars/tasks/chars.yaml": """
        name: chars
        output_type: per_character
        template: chars.jinja
        metrics: [logprob_per_char]
        data:
          local: chars.jsonl
    """,
    "icl_chars/tasks/chars.jinja": """
        {% block input %}Q: {{ q }}
        A:{% endblock %}
        {% block target %}{{ a }}{% endblock %}
    """,
}
ENTRY_POINTS = """
    [icl_eval.tasks]
    chars = icl_chars:TASKS

    [icl_eval.metrics]
    logprob_per_char = icl_chars.metric:METRIC

    [icl_eval.kinds]
    per_character = icl_chars.kind:PerCharacter

    [icl_eval.models]
    tinyhf = icl_chars.backend:load
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    distribution(tmp_path / "site", "icl_eval_chars", ENTRY_POINTS, FILES)
    plugins.refresh()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("icl_chars")]:
        del sys.modules[name]
    plugins.refresh()


def test_a_plugins_task_metric_kind_and_backend_run_end_to_end(site, tiny_checkpoint, capsys):
    (site / "chars.jsonl").write_text("".join(json.dumps({"q": f"{i} plus 1?", "a": str(i + 1)}) + "\n" for i in range(5)))
    assert main(["tasks"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chars ")]
    assert listed and "per_character" in listed[0] and "plugin icl_eval_chars" in listed[0]

    argv = ["run", "--backend", "tinyhf", "--model", str(tiny_checkpoint), "--tasks", "chars", "--shots", "0,2",
            "--data-dir", str(site), "--output", str(site / "out"), "--no-cache"]
    assert main(argv) == 0
    results = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert sys.modules["icl_chars.backend"].CALLS == [str(tiny_checkpoint)]
    res = json.loads(results.read_text())
    assert res["tasks"]["chars"]["output_type"] == "per_character"
    assert [(r["shots"], r["metric"], r["n"]) for r in res["records"]] == [(0, "logprob_per_char", 5), (2, "logprob_per_char", 5)]
    for line in (results.parent / "samples" / "chars_2shot.jsonl").read_text().splitlines():
        sample = json.loads(line)
        assert sample["target_chars"] == len(sample["target"])  # the plugin kind's own field
        assert sample["metrics"]["logprob_per_char"] == pytest.approx(sample["loglikelihood"] / len(sample["target"]))


def test_an_unknown_backend_is_one_line_before_anything_loads(site, capsys):
    (site / "chars.jsonl").write_text(json.dumps({"q": "1?", "a": "2"}) + "\n")
    assert main(["run", "--backend", "nope", "--model", "x", "--tasks", "chars", "--data-dir", str(site)]) == 2
    assert "--backend nope: no such backend; installed: hf, openai, vllm, tinyhf" in capsys.readouterr().err
