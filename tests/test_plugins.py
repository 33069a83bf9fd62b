"""Plugin discovery through entry points: a distribution built in tmp_path (package + .dist-info) is found, its
task folder and metric load, and a broken plugin costs one warning line while the others keep working."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from icl_eval import metrics, plugins
from icl_eval.task_config import load_task_file

# The example of docs/plugins.md, file by file.
EXAMPLE = {
    "icl_capitals/__init__.py": """
        from pathlib import Path

        TASKS = Path(__file__).parent / "tasks"  # the folder icl-eval reads like an --include-path
    """,
    "icl_capitals/metrics.py": """
        from icl_eval.metrics import mean_stderr


        class AnswerWords:
            \"\"\"How many words the model answered with (terse is better), shaped like icl_eval.metrics.Metric.\"\"\"

            higher_is_better = False
            output_types = ("generate",)
            corpus = False

            def item(self, prediction: str, references: list[str]) -> float:
                return float(len(prediction.split()))

            def aggregate(self, items: list[float]) -> tuple[float, float | None]:
                return mean_stderr(items)


        ANSWER_WORDS = AnswerWords()
    """,
    "icl_capitals/tasks/capitals.yaml": """
        name: capitals
        output_type: generate
        template: capitals.jinja
        metrics: [exact_match, answer_words]
        until: ["\\n"]
        max_new_tokens: 8
        data:
          local: capitals/capitals.jsonl
    """,
    "icl_capitals/tasks/capitals.jinja": """
        {% block input %}Q: What is the capital of {{ country }}?
        A:{% endblock %}
        {% block target %}{{ capital }}{% endblock %}
    """,
}
EXAMPLE_ENTRY_POINTS = """
    [icl_eval.tasks]
    capitals = icl_capitals:TASKS

    [icl_eval.metrics]
    answer_words = icl_capitals.metrics:ANSWER_WORDS
"""


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def distribution(root: Path, name: str, entry_points: str, files: dict[str, str] | None = None) -> None:
    """An installed distribution as importlib.metadata sees one: modules plus <name>-<version>.dist-info/."""
    write(root, files or {})
    write(root, {
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{name}-0.1.dist-info/entry_points.txt": entry_points,
    })


@pytest.fixture
def site(tmp_path, monkeypatch):
    """tmp_path as a site folder on sys.path, with a clean plugin cache before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.refresh()
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("icl_capitals", "icl_broken", "icl_other")):
            del sys.modules[name]
    plugins.refresh()


def ours(group: str) -> dict[str, object]:
    return {k: v for k, v in plugins.load_group(group).items() if k in ("capitals", "answer_words", "frobnicate", "echo", "other")}


def test_the_documented_example_is_discovered_and_its_task_parses(site, monkeypatch):
    distribution(site, "icl_eval_capitals", EXAMPLE_ENTRY_POINTS, EXAMPLE)
    assert ("icl_eval_capitals", (site / "icl_capitals" / "tasks").resolve()) in plugins.task_folders()
    metric = ours(plugins.METRICS)["answer_words"]
    assert metric.item("Paris, France", ["Paris"]) == 2.0 and metric.aggregate([1.0, 3.0]) == (2.0, 1.0)
    # Once plugin metrics join the registry, the plugin's own task (which names one) parses like a built-in.
    monkeypatch.setitem(metrics.METRICS, "answer_words", metric)
    folder = dict(plugins.task_folders())["icl_eval_capitals"]
    task = load_task_file(folder / "capitals.yaml")
    assert task.name == "capitals" and task.metrics == ("exact_match", "answer_words")
    assert docs_example_matches()


def test_a_broken_plugin_is_one_warning_line_and_the_others_keep_working(site, capsys):
    distribution(site, "icl_eval_capitals", EXAMPLE_ENTRY_POINTS, EXAMPLE)
    distribution(site, "icl_eval_broken", "[icl_eval.metrics]\nfrobnicate = icl_broken:METRIC\n", {
        "icl_broken/__init__.py": 'raise ImportError("icl_broken needs the frobnicate package: pip install frobnicate")\n',
    })
    assert set(ours(plugins.METRICS)) == {"answer_words"}
    assert [d for d, _ in plugins.task_folders() if d == "icl_eval_capitals"] == ["icl_eval_capitals"]
    lines = [x for x in capsys.readouterr().err.splitlines() if "icl_eval_broken" in x]
    assert lines == [
        "icl-eval: warning: plugin 'frobnicate' (icl_eval.metrics = icl_broken:METRIC) from distribution icl_eval_broken "
        "is skipped: cannot load it (ImportError: icl_broken needs the frobnicate package: pip install frobnicate)"
    ]
    broken = [f for f in plugins.failures() if f.distribution == "icl_eval_broken"]
    assert [(f.group, f.name) for f in broken] == [(plugins.METRICS, "frobnicate")]
    plugins.load_group(plugins.METRICS)  # cached: no second warning
    assert "icl_eval_broken" not in capsys.readouterr().err


def test_entry_points_of_the_wrong_shape_are_skipped_with_the_reason(site, capsys):
    distribution(site, "icl_eval_other", textwrap.dedent("""
        [icl_eval.tasks]
        other = icl_other:missing_folder
        [icl_eval.models]
        echo = icl_other:NOT_A_FACTORY
        [icl_eval.metrics]
        other = icl_other:NOT_A_METRIC
    """), {"icl_other/__init__.py": """
        def missing_folder():
            return "/nonexistent/icl-eval-plugin-tasks"

        NOT_A_FACTORY = 3
        NOT_A_METRIC = "acc"
    """})
    assert ours(plugins.TASKS) == {} and ours(plugins.MODELS) == {} and ours(plugins.METRICS) == {}
    reasons = {f.group: f.error for f in plugins.failures() if f.distribution == "icl_eval_other"}
    assert "/nonexistent/icl-eval-plugin-tasks is not a folder" in reasons[plugins.TASKS]
    assert "a model plugin is a backend factory" in reasons[plugins.MODELS]
    assert "gave str; a metric is a Metric-like object" in reasons[plugins.METRICS]
    assert len([x for x in capsys.readouterr().err.splitlines() if "icl_eval_other" in x]) == 3


def test_a_name_two_distributions_claim_goes_to_the_first_on_the_path(site, tmp_path_factory, monkeypatch):
    distribution(site, "icl_eval_capitals", EXAMPLE_ENTRY_POINTS, EXAMPLE)
    later = tmp_path_factory.mktemp("later_site")
    distribution(later, "icl_eval_other", "[icl_eval.tasks]\ncapitals = icl_other:TASKS\n", {"icl_other/__init__.py": "TASKS = '.'\n"})
    monkeypatch.setattr(sys, "path", [*sys.path, str(later)])  # after the first distribution's folder
    plugins.refresh()
    assert dict(plugins.task_folders())["icl_eval_capitals"] == (site / "icl_capitals" / "tasks").resolve()
    clash = [f for f in plugins.failures() if f.distribution == "icl_eval_other"]
    assert [f.error for f in clash] == ["the name is already provided by distribution icl_eval_capitals"]


def test_a_models_plugin_is_a_factory_and_kinds_pass_through(site):
    distribution(site, "icl_eval_other", "[icl_eval.models]\necho = icl_other:build\n[icl_eval.kinds]\nother = icl_other:KIND\n", {
        "icl_other/__init__.py": "def build(path, **options):\n    return ('echo', path)\n\nKIND = {'output_type': 'echo'}\n",
    })
    assert ours(plugins.MODELS)["echo"]("x") == ("echo", "x")
    assert ours(plugins.KINDS)["other"] == {"output_type": "echo"}


def test_an_unknown_group_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown plugin group 'icl_eval.task'"):
        plugins.load_group("icl_eval.task")


def docs_example_matches() -> bool:
    """docs/plugins.md shows these exact files, so the documented plugin is the tested one."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(t).strip() for t in EXAMPLE.values()]
    missing = [b.splitlines()[0] for b in blocks if b not in doc]
    assert not missing, f"docs/plugins.md lacks the example file starting {missing}"
    return True
