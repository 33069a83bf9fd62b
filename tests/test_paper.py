"""The GPT-3 paper's Table H.1 as reference: the table, nearest(), run's paper lines, compare's column and curve,
task groups and --shots fewshot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from icl_eval.cli import main
from icl_eval.compare import plots, reference, table
from icl_eval.compare.load import Column
from icl_eval.errors import IclEvalError
from icl_eval.paper import gpt3_rows, nearest, setting_for, to_icl_scale
from icl_eval.paper.report import paper_lines
from icl_eval.registry import load_tasks

SIZES = [125_000_000, 350_000_000, 760_000_000, 1_300_000_000, 2_700_000_000, 6_700_000_000, 13_000_000_000, 175_000_000_000]


def test_table_has_every_size_of_lambada():
    rows = gpt3_rows("lambada", "acc")
    for setting in ("zero", "one", "few"):
        assert [r.params for r in rows if r.setting == setting] == SIZES
    zero = [r for r in rows if r.setting == "zero"]
    assert (zero[0].value, zero[-1].value, zero[0].model_name) == (42.7, 76.2, "GPT-3 Small")
    assert {r.metric for r in gpt3_rows("lambada")} == {"acc", "ppl"}
    assert all("A=P" in r.crosscheck for r in gpt3_rows("lambada"))
    assert gpt3_rows("no_such_task") == [] and gpt3_rows("wmt14_en_fr", "chrf") == []


def test_nearest_size_setting_and_metric_mapping():
    assert nearest("lambada", "acc", 0, 124_439_808).params == 125_000_000  # GPT-2 small
    assert nearest("lambada", "acc", 0, 1_000_000_000).params == 1_300_000_000  # log scale: 1.3B, not 760M
    assert nearest("lambada", "acc", 0, 10**6).params == 125_000_000
    assert nearest("lambada", "acc", 0, 10**12).params == 175_000_000_000
    few = nearest("arithmetic_2da", "acc", 3, 125_000_000)
    assert (few.setting, few.k_fewshot, few.text, few.shots) == ("few", 50, "2.00", 50)
    assert nearest("arithmetic_2da", "acc", 1, 175_000_000_000).value == 99.6
    assert nearest("nq_open", "exact_match", 0, 175_000_000_000).value == 14.6  # the paper's "acc" on NQ
    assert nearest("wmt14_fr_en", "bleu", 0, 175_000_000_000).metric == "BLEU-sb"
    assert nearest("lambada", "perplexity", "few", 175_000_000_000).value == 1.92
    assert nearest("lambada_cloze", "acc", 15, 175_000_000_000).value == 86.4
    assert nearest("nq_open", "f1", 0, 10**9) is None and nearest("t", "acc", 0, 10**9) is None
    assert [setting_for(k) for k in (0, 1, 2, 64)] == ["zero", "one", "few", "few"]


def test_scales():
    row = nearest("lambada", "acc", 0, 125_000_000)
    assert to_icl_scale(row, "acc") == pytest.approx(0.427)
    assert to_icl_scale(nearest("lambada", "perplexity", 0, 125_000_000), "perplexity") == 18.6
    assert to_icl_scale(nearest("wmt14_fr_en", "bleu", 0, 125_000_000), "bleu") == 2.29


def test_paper_lines_one_per_task_and_shots():
    class R:
        def __init__(self, task, shots, metric):
            self.task, self.shots, self.metric = task, shots, metric

    recs = [R("lambada", 0, "acc"), R("lambada", 0, "perplexity"), R("arithmetic_2da", 3, "acc"), R("wmt14_en_fr", 0, "chrf"), R("t", 0, "acc")]
    lines = paper_lines(recs, 124_000_000)
    assert lines == [
        "GPT-3 (paper, Table H.1) at the nearest size, 125M (GPT-3 Small): lambada 0-shot acc 42.7%, ppl 18.6",
        "GPT-3 (paper, Table H.1) at the nearest size, 125M (GPT-3 Small): arithmetic_2da 3-shot (paper's few-shot K=50) acc 2.00%",
    ]
    assert paper_lines(recs, None) == []


def test_run_prints_the_paper_line(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2da", "--shots", "0,3", "--limit", "4", "--output", str(out), "--no-cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    paper = [line for line in lines if line.startswith("GPT-3 (paper, Table H.1)")]
    assert paper == [
        "GPT-3 (paper, Table H.1) at the nearest size, 125M (GPT-3 Small): arithmetic_2da 0-shot acc 0.70%",
        "GPT-3 (paper, Table H.1) at the nearest size, 125M (GPT-3 Small): arithmetic_2da 3-shot (paper's few-shot K=50) acc 2.00%",
    ]
    # Right under the results table, before the results path.
    assert lines.index(paper[0]) < len(lines) - 1 and lines[-1].endswith("results.json")


def _records(rows: list[tuple[str, str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"column": c, "task": t, "metric": m, "shots": k, "value": v, "stderr": 0.01} for c, t, m, k, v in rows])


def test_compare_table_gets_the_paper_column():
    cols = [Column("small", "small", 125_000_000), Column("big", "big", 1_400_000_000)]
    recs = _records([("small", "lambada", "acc", 0, 0.3), ("big", "lambada", "acc", 0, 0.6), ("big", "lambada", "acc", 3, 0.6),
                     ("big", "hellaswag", "acc_norm", 0, 0.5), ("big", "t", "acc", 0, 0.5)])
    tab = reference.with_paper(table.build_table(recs, cols), cols)
    assert tab.reference_label == "GPT-3 at the nearest size, 1.3B (GPT-3 XL)"  # nearest the largest model
    assert tab.reference[("lambada", "acc", 0)] == "0.6360"
    assert tab.reference[("lambada", "acc", 3)] == "0.5700 (K=15)"
    assert tab.reference[("hellaswag", "acc_norm", 0)] == "0.5470"
    assert ("t", "acc", 0) not in tab.reference.index
    assert list(tab.values.columns) == ["small", "big"] and not tab.best["big"].isna().any()  # not a model column
    from icl_eval.compare import formats

    md = formats.render(tab, "md").splitlines()
    assert md[0].endswith("| big | GPT-3 at the nearest size, 1.3B (GPT-3 XL) |")
    assert any(line.startswith("| t | acc | 0 |") and line.endswith("| — |") for line in md)
    assert "Table H.1" in formats.render(tab, "html")
    # Nothing the paper has: the table is unchanged.
    plain = table.build_table(_records([("big", "t", "acc", 0, 0.5)]), cols)
    assert reference.with_paper(plain, cols) is plain


def test_size_plot_draws_the_paper_curve_per_setting():
    params = {"small": 125_000_000, "big": 1_400_000_000}
    recs = _records([(c, "lambada", "acc", k, v) for c in params for k, v in ((0, 0.3), (1, 0.35), (8, 0.4))])
    fig = plots.scaling_figure("lambada", "acc", recs, params)
    ax = fig.axes[0]
    paper = [ln for ln in ax.get_lines() if ln.get_label().startswith("GPT-3 (paper)")]
    assert [ln.get_label() for ln in paper] == ["GPT-3 (paper), 0-shot", "GPT-3 (paper), 1-shot", "GPT-3 (paper), few-shot K=15"]
    zero = paper[0]
    assert zero.get_linestyle() == "--" and list(zero.get_xdata()) == SIZES
    assert list(zero.get_ydata()) == pytest.approx([r.value / 100 for r in gpt3_rows("lambada", "acc") if r.setting == "zero"])
    runs = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert zero.get_color() == runs["0-shot"] and paper[2].get_color() == runs["8-shot"]
    assert ax.get_xscale() == "log"
    assert "GPT-3 (paper), 0-shot" in [t.get_text() for t in fig.legends[0].get_texts()]
    # A task the paper does not have: no reference line.
    other = plots.scaling_figure("t", "acc", recs.assign(task="t"), params)
    assert not [ln for ln in other.axes[0].get_lines() if ln.get_label().startswith("GPT-3")]


GROUP_TASK = """name: {name}
output_type: loglikelihood
template: t.jinja
metrics: [acc]
{extra}data:
  local: {local}
"""


def _user_tasks(d: Path, tasks: dict[str, str], groups: dict[str, str], ks: dict[str, int] | None = None) -> None:
    (d / "t.jinja").write_text("{% block input %}Q: {{ q }}{% endblock %}{% block target %} {{ a }}{% endblock %}")
    (d / "t.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(6)))
    for name, local in tasks.items():
        extra = f"fewshot_k: {ks[name]}\n" if ks and name in ks else ""
        (d / f"{name}.yaml").write_text(GROUP_TASK.format(name=name, local=local, extra=extra))
    for name, members in groups.items():
        (d / f"{name}.yaml").write_text(f"group: {name}\ntasks: [{members}]\n")


def test_groups_expand_nest_and_skip_with_a_line(tmp_path):
    _user_tasks(tmp_path, {"a": "t.jsonl", "b": "t.jsonl", "nodata": "missing.jsonl"},
                {"outer": "inner, b, no_such_task, nodata, a", "inner": "a"})
    said: list[str] = []
    tasks = load_tasks("outer", [str(tmp_path)], data_dir=str(tmp_path), on_skip=said.append)
    assert [t.name for t in tasks] == ["a", "b"]  # nested first, named twice runs once
    assert said[0] == "skipped no_such_task (group outer): task not available in this version of icl-eval"
    assert said[1].startswith("skipped nodata (group outer): no data for task 'nodata'") and len(said) == 2
    # Named on its own, a task without data is kept (the run's data check then stops with its error).
    said.clear()
    assert [t.name for t in load_tasks("outer,nodata", [str(tmp_path)], data_dir=str(tmp_path), on_skip=said.append)] == ["a", "b", "nodata"]
    assert len(said) == 1
    with pytest.raises(IclEvalError, match="includes 'outer'"):
        (tmp_path / "inner.yaml").write_text("group: inner\ntasks: [a, outer]\n")
        load_tasks("outer", [str(tmp_path)], data_dir=str(tmp_path), on_skip=said.append)


def test_shipped_groups(capsys):
    said: list[str] = []
    arithmetic = load_tasks("arithmetic", on_skip=said.append)  # generated when no file is found: never skipped
    assert len(arithmetic) == 10 and not said
    from icl_eval.registry import catalogue, expand_group

    known, groups = catalogue()
    assert {"gpt3", "gpt3_multiple_choice", "gpt3_reading", "superglue", "arithmetic", "unscramble", "translation"} <= set(groups)
    names = [t.name for t in expand_group("gpt3", groups, known, said.append)]
    assert {"lambada", "wmt16_en_ro", "race_h", "boolq", "arithmetic_1dc", "unscramble_rw"} <= set(names)
    assert {"ptb", "coqa", "squad_v2"} <= set(names)  # the language-modelling and reading tasks are in
    assert all(line.endswith("task not available in this version of icl-eval") for line in said)
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "fewshot K" in out and "\ngroups " in out and "gpt3_reading" in out
    assert any(line.startswith("arithmetic_2da ") and " 50 " in line for line in out.splitlines())


def test_shots_fewshot_runs_each_task_at_its_k(tiny_checkpoint, tmp_path, capsys):
    _user_tasks(tmp_path, {"a": "t.jsonl", "b": "t.jsonl"}, {"g": "a, b"}, ks={"a": 2, "b": 3})
    argv = ["run", "--model", str(tiny_checkpoint), "--tasks", "g", "--shots", "0,fewshot", "--include-path", str(tmp_path),
            "--data-dir", str(tmp_path), "--output", str(tmp_path / "out"), "--no-cache"]
    assert main(argv) == 0
    res = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert {(r["task"], r["shots"]) for r in res["records"]} == {("a", 0), ("a", 2), ("b", 0), ("b", 3)}
    assert res["settings"]["shots"] == [0, 2, 3] and res["settings"]["shots_per_task"] == {"a": [0, 2], "b": [0, 3]}
    run_dir = tmp_path / "out"
    assert sorted(p.name for p in run_dir.rglob("*shot.jsonl")) == ["a_0shot.jsonl", "a_2shot.jsonl", "b_0shot.jsonl", "b_3shot.jsonl"]


def test_every_shipped_task_has_the_papers_k():
    from icl_eval.registry import discover

    tasks = discover()
    assert all(t.fewshot_k is not None for t in tasks.values())
    assert tasks["ptb"].fewshot_k == 0  # the paper scored PTB zero-shot only
    assert (tasks["storycloze"].fewshot_k, tasks["wsc273"].fewshot_k, tasks["cb"].fewshot_k, tasks["lambada_cloze"].fewshot_k) == (70, 7, 32, 15)
