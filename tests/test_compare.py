"""`icl-eval compare` on synthetic runs: 3 model sizes x 3 shot counts x 2 tasks, with per-example sample logs."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from icl_eval import metrics
from icl_eval.cli import _print_table
from icl_eval.cli import main as cli_main
from icl_eval.compare import formats, load, plots, report, table
from icl_eval.compare import FORMATS
from icl_eval.compare.cli import collect_tests, register, run_command
from icl_eval.compare.significance import paired_bootstrap
from icl_eval.errors import IclEvalError

SHOTS = (0, 1, 32)
N_DOCS = 200
# Names sort against size on purpose, so ordering by name would fail the ordering test.
MODELS = {"zeta-small": 125_000_000, "alpha-large": 1_300_000_000, "mid-medium": 350_000_000}
ACC_RATE = {"zeta-small": 0.30, "mid-medium": 0.50, "alpha-large": 0.85}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    arr = np.asarray(xs, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def _perplexity(items: list[float]) -> tuple[float, float]:
    mean, se = _mean_se(items)
    return math.exp(-mean), math.exp(-mean) * se


def _items(model: str, task: str, shots: int) -> dict[str, list[float]]:
    """Per-example items; fixed per (model, task, shots) so a copy of a model reproduces them exactly."""
    seed = sum(map(ord, model.replace("-copy", ""))) * 100 + len(task) * 10 + shots
    rng = np.random.default_rng(seed)
    rate = min(0.99, ACC_RATE[model.replace("-copy", "")] + 0.02 * SHOTS.index(shots))
    correct = (rng.random(N_DOCS) < rate).astype(float)
    if task == "lambada":
        # Larger models put more probability on the gold word: higher log-likelihood, lower perplexity.
        ll = rng.normal(-3.0 + 2.0 * rate, 0.5, N_DOCS)
        return {"acc": correct.tolist(), "perplexity": ll.tolist()}
    return {"exact_match": correct.tolist()}


def write_run(
    root: Path, model: str, params: int, *, tasks=("lambada", "triviaqa"), config_hash: str = "cfg0",
    version: str = "0.1.0", run_id: str | None = None, samples: bool = True, started_at: str = "2026-11-22T23:45:01+00:00",
    old_keys: bool = False,
) -> Path:
    """A run's results.json and sample logs; `old_keys` logs each item under its metric's name, as logs did before
    the perplexity item was named for what it is (a log-likelihood)."""
    key = (lambda m: m) if old_keys else metrics.item_field
    run_dir = root / (run_id or model)
    (run_dir / "samples").mkdir(parents=True)
    records = []
    for task in tasks:
        for k in SHOTS:
            items = _items(model, task, k)
            lines = []
            for doc in range(N_DOCS):
                lines.append(json.dumps({"task": task, "shots": k, "doc_id": doc, "metrics": {key(m): v[doc] for m, v in items.items()}}))
            if samples:
                (run_dir / "samples" / f"{task}_{k}shot.jsonl").write_text("\n".join(lines) + "\n")
            for metric, values in items.items():
                value, se = _perplexity(values) if metric == "perplexity" else _mean_se(values)
                records.append({"task": task, "shots": k, "metric": metric, "value": value, "stderr": se, "n": N_DOCS})
    results = {
        "icl_eval_version": version, "run_id": run_id or f"20261122-{model}", "started_at": started_at,
        "finished_at": started_at,
        "model": {"name": model, "path": f"/models/{model}", "num_parameters": params, "dtype": "float32",
                  "device": "cpu", "fingerprint": "f" * 64},
        "settings": {"seed": 1234, "limit": None, "shots": list(SHOTS), "batch_size": "auto",
                     "bos_policy": "tokenizer", "fewshot_mode": "per_example"},
        "tasks": {t: {"config_hash": config_hash, "template_hash": "tpl0", "output_type": "loglikelihood",
                      "n_docs": N_DOCS, "data_source": "synthetic", "truncation": {}} for t in tasks},
        "records": records,
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for model, params in MODELS.items():
        write_run(root, model, params)
    return root


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="icl-eval")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compare", *argv])


def _table(root: Path, **kw) -> tuple[load.Loaded, table.Table]:
    loaded = load.load([root])
    return loaded, table.build_table(table.select(loaded.records, **kw), loaded.columns)


def test_table_values_and_formatting(runs: Path) -> None:
    _, tab = _table(runs)
    assert tab.values.shape == (2 * 3 + 3, 3)  # lambada acc+perplexity and triviaqa exact_match, x 3 shots
    value, se = _mean_se(_items("mid-medium", "triviaqa", 1)["exact_match"])
    assert tab.values.at[("triviaqa", "exact_match", 1), "mid-medium"] == pytest.approx(value)
    cells = table.cell_texts(tab)
    assert cells.at[("triviaqa", "exact_match", 1), "mid-medium"] == f"{value:.4f} ± {se:.4f}"
    assert list(tab.values.index.get_level_values("shots")[:3]) == [0, 1, 32]


def test_columns_ordered_by_parameter_count(runs: Path) -> None:
    loaded, tab = _table(runs)
    assert list(tab.values.columns) == ["zeta-small", "mid-medium", "alpha-large"]
    assert [c.num_parameters for c in loaded.columns] == sorted(MODELS.values())


def test_best_per_row_respects_lower_is_better(runs: Path) -> None:
    _, tab = _table(runs)
    for row in tab.values.index:
        best = list(tab.best.columns[tab.best.loc[row]])
        pick = tab.values.loc[row].idxmin() if row[1] == "perplexity" else tab.values.loc[row].idxmax()
        assert best == [pick]
    # The synthetic large model wins both ways: highest accuracy and lowest perplexity.
    assert tab.best.at[("lambada", "perplexity", 0), "alpha-large"]
    assert tab.best.at[("lambada", "acc", 0), "alpha-large"]
    marked = table.cell_texts(tab, emphasise=lambda s: f"<{s}>")
    assert marked.at[("lambada", "perplexity", 0), "alpha-large"].startswith("<")
    assert not marked.at[("lambada", "perplexity", 0), "zeta-small"].startswith("<")


def test_best_marks_ties_and_skips_lone_values() -> None:
    records = pd.DataFrame(
        [
            ("a", "t", "acc", 0, 0.5, 0.1), ("b", "t", "acc", 0, 0.5, 0.1), ("c", "t", "acc", 0, 0.2, 0.1),
            ("a", "t", "perplexity", 0, 9.0, 1.0),
        ],
        columns=["column", "task", "metric", "shots", "value", "stderr"],
    )
    cols = [load.Column(name, name, i + 1) for i, name in enumerate("abc")]
    tab = table.build_table(records, cols)
    assert list(tab.best.loc[("t", "acc", 0)]) == [True, True, False]
    assert not tab.best.loc[("t", "perplexity", 0)].any()
    assert table.cell_texts(tab).at[("t", "perplexity", 0), "b"] == table.MISSING
    records.loc[3, "stderr"] = float("nan")
    assert table.cell_texts(table.build_table(records, cols)).at[("t", "perplexity", 0), "a"] == "9.0000"


def test_significance_marks_clear_difference_not_identical_copy(runs: Path) -> None:
    write_run(runs, "zeta-small-copy", MODELS["zeta-small"])
    loaded = load.load([runs])
    tab = table.build_table(loaded.records, loaded.columns)
    tests = collect_tests(loaded.records, "zeta-small", None, 1000, 1234)  # no corpus score: none is needed
    tab = table.with_baseline(tab, "zeta-small", tests, 1000, 1234)
    row = ("lambada", "acc", 32)
    assert tests[(row, "alpha-large")].significant
    assert tests[(row, "alpha-large")].p_value < 0.01
    assert tests[(row, "zeta-small-copy")].p_value == 1.0
    cells = table.cell_texts(tab)
    assert re.search(r"\(\+0\.\d{4}\*\)$", cells.at[row, "alpha-large"])
    assert cells.at[row, "zeta-small-copy"].endswith("(+0.0000)")
    assert "(" not in cells.at[row, "zeta-small"]  # the baseline shows no difference to itself
    # Perplexity needs no corpus score: it is tested on its log-likelihood items, and the footnote says so.
    assert cells.at[("lambada", "perplexity", 0), "alpha-large"].endswith("*)")
    assert any("but tested on the mean per-example log-likelihood" in n for n in table.footnotes(tab, "bold"))


def test_bootstrap_is_seeded_and_resamples_corpus_metrics_through_the_score() -> None:
    rng = np.random.default_rng(0)
    base = {str(i): float(x) for i, x in enumerate(rng.normal(-2, 0.5, 150))}
    better = {k: v + 0.5 for k, v in base.items()}
    first = paired_bootstrap("acc", base, better, seed=7)
    assert first == paired_bootstrap("acc", base, better, seed=7)
    assert first.significant and first.n_pairs == 150 and first.scale == ""
    # Perplexity is tested on its items' mean (log-likelihood), with no call to a score.
    ppl = paired_bootstrap("perplexity", base, better, score=None)
    assert ppl.significant and ppl.scale == "mean per-example log-likelihood"
    # A corpus metric's items are statistics, not numbers to average: each resample goes through the score.
    calls = []

    def score(metric: str, items: list) -> float:
        calls.append(metric)
        return float(np.mean([x[0] for x in items]))

    stats_base = {k: [v, 1] for k, v in base.items()}
    stats_better = {k: [v, 1] for k, v in better.items()}
    bleu = paired_bootstrap("bleu", stats_base, stats_better, score=score, n_resamples=200)
    assert bleu.significant and len(calls) == 2 + 2 * 200
    assert paired_bootstrap("bleu", stats_base, stats_better, score=None).p_value is None
    assert "not a metric this version" in paired_bootstrap("rouge", base, better).reason
    assert "not numbers" in paired_bootstrap("acc", {"0": "yes"}, {"0": 1.0}).reason
    assert "non-finite" in paired_bootstrap("perplexity", {"0": -math.inf}, {"0": -1.0}).reason
    # Only docs logged by both models are paired.
    assert paired_bootstrap("acc", base, {"0": 1.0, "x": 0.0}).n_pairs == 1
    assert paired_bootstrap("acc", {"a": 1.0}, {"b": 1.0}).reason == "no doc_id in common"


def test_missing_sample_logs_leave_differences_untested(tmp_path: Path) -> None:
    write_run(tmp_path, "zeta-small", MODELS["zeta-small"], samples=False)
    write_run(tmp_path, "alpha-large", MODELS["alpha-large"])
    loaded = load.load([tmp_path])
    tests = collect_tests(loaded.records, "zeta-small", None, 100, 0)
    assert all(t.p_value is None and t.reason == "no per-example sample logs" for t in tests.values())


def test_conflicting_runs_are_flagged_and_kept_apart(tmp_path: Path) -> None:
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="run-a", config_hash="cfgA")
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="run-b", config_hash="cfgB",
              started_at="2026-11-23T10:00:00+00:00")
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="run-c", config_hash="cfgA", version="0.2.0",
              started_at="2026-11-24T10:00:00+00:00")
    loaded = load.load([tmp_path])
    labels = [c.label for c in loaded.columns]
    assert labels == ["mid-medium [v0.1.0 run run-a]", "mid-medium [v0.1.0 run run-b]", "mid-medium [v0.2.0 run run-c]"]
    assert loaded.records.groupby("column").size().to_dict() == dict.fromkeys(labels, 9)
    (warning,) = [w for w in loaded.warnings if w.startswith("runs of mid-medium disagree")]
    assert "lambada config_hash cfgA vs cfgB" in warning and "icl_eval_version 0.1.0 vs 0.2.0" in warning
    with pytest.raises(IclEvalError, match="matches 3 columns"):
        table.resolve_baseline("mid-medium", loaded.columns)
    assert table.resolve_baseline(labels[0], loaded.columns) == labels[0]


def test_compatible_runs_of_one_model_merge(tmp_path: Path) -> None:
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="lam", tasks=("lambada",))
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="tqa", tasks=("triviaqa",))
    loaded = load.load([tmp_path])
    assert [c.label for c in loaded.columns] == ["mid-medium"]
    assert set(loaded.records["task"]) == {"lambada", "triviaqa"}
    assert loaded.warnings == []


def test_cross_model_config_difference_is_warned(tmp_path: Path) -> None:
    write_run(tmp_path, "zeta-small", MODELS["zeta-small"], config_hash="cfgA")
    write_run(tmp_path, "alpha-large", MODELS["alpha-large"], config_hash="cfgB")
    warnings = load.load([tmp_path]).warnings
    assert any(w.startswith("lambada: alpha-large and zeta-small were evaluated with different task configs") for w in warnings)


def test_the_offered_formats_are_the_rendered_ones() -> None:
    assert set(FORMATS) == set(formats.RENDERERS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_output_format(runs: Path, fmt: str, capsys) -> None:
    assert run_command(_args(str(runs), "--format", fmt, "--baseline", "zeta-small", "--metrics", "acc,exact_match")) == 0
    out = capsys.readouterr().out
    if fmt == "md":
        lines = out.splitlines()
        # The last column is the GPT-3 paper's number at the size nearest the largest model (compare/reference.py).
        assert lines[0] == "| task | metric | shots | zeta-small | mid-medium | alpha-large | GPT-3 at the nearest size, 1.3B (GPT-3 XL) |"
        assert lines[1].startswith("| --- | --- | ---: |")
        assert re.search(r"\| \*\*0\.\d{4} ± 0\.\d{4}\*\* \(\+0\.\d{4}\\\*\) \| [\d.]+ \|$", lines[2])
        assert "p < 0.05" in out
    elif fmt == "csv":
        frame = pd.read_csv(io.StringIO(out))
        assert list(frame.columns) == ["task", "metric", "shots", "zeta-small", "mid-medium", "alpha-large", "GPT-3 at the nearest size, 1.3B (GPT-3 XL)"]
        assert len(frame) == 6 and frame["alpha-large"].str.contains(r"\(best\) \(\+").all()
    elif fmt == "html":
        assert out.startswith('<table class="compare">') and "<strong>" in out and "<th>alpha-large</th>" in out
    else:
        assert out.startswith("\\begin{tabular}{llrrrrr}") and "\\textbf{" in out and "$\\pm$" in out
        assert "exact\\_match" in out and "\\end{tabular}" in out


def test_filters_and_bad_input(runs: Path, tmp_path: Path, capsys) -> None:
    assert run_command(_args(str(runs), "--tasks", "triviaqa")) == 0
    out = capsys.readouterr().out
    assert "triviaqa" in out and "lambada" not in out
    with pytest.raises(IclEvalError, match=r"--tasks: unknown task 'hellaswag'"):
        run_command(_args(str(runs), "--tasks", "hellaswag"))
    with pytest.raises(IclEvalError, match=r"--metrics: unknown metric 'bleu'"):
        run_command(_args(str(runs), "--metrics", "bleu"))
    with pytest.raises(IclEvalError, match=r"--baseline 'gpt9' is not a model"):
        run_command(_args(str(runs), "--baseline", "gpt9"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IclEvalError, match="no results.json found"):
        load.find_results([tmp_path / "empty"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(IclEvalError, match="missing field 'model'"):
        load.load([tmp_path / "bad.json"])
    assert cli_main(["compare", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_plots_decode_with_expected_size(runs: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "plots"
    assert run_command(_args(str(runs), "--plot", str(out_dir), "--format", "csv")) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    pairs = ["lambada_acc", "lambada_perplexity", "triviaqa_exact_match"]
    assert names == sorted(f"{p}_vs_{x}.png" for p in pairs for x in ("params", "shots"))
    for name in names:
        image = imread(out_dir / name)
        assert image.shape[:2] == (plots.PIXELS[1], plots.PIXELS[0])
        assert image[..., :3].std() > 0  # something was drawn


def test_report_is_self_contained(runs: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.html"
    assert run_command(_args(str(runs), "--report", str(report), "--baseline", "alpha-large")) == 0
    text = report.read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 6
    assert all(base64.b64decode(u).startswith(b"\x89PNG\r\n\x1a\n") for u in uris)
    assert not re.search(r"https?://", text)
    assert not re.search(r"<(script|link)\b", text)
    assert '<table class="compare">' in text and "difference to the baseline alpha-large" in text


# --- Perplexity significance, the sample-log field of its item, duplicated runs, the report and number formatting ---


def _write_lambada(root: Path, model: str, params: int, lls: np.ndarray, *, old_keys: bool = False) -> Path:
    """One model, lambada 0-shot perplexity only, from the given per-example log-likelihoods."""
    run_dir = root / model
    (run_dir / "samples").mkdir(parents=True)
    key = "perplexity" if old_keys else metrics.item_field("perplexity")
    lines = [json.dumps({"task": "lambada", "shots": 0, "doc_id": i, "metrics": {key: float(ll)}}) for i, ll in enumerate(lls)]
    (run_dir / "samples" / "lambada_0shot.jsonl").write_text("\n".join(lines) + "\n")
    value, se = _perplexity(list(lls))
    results = {
        "icl_eval_version": "0.1.0", "run_id": model, "started_at": "2026-11-22T23:45:01+00:00",
        "model": {"name": model, "num_parameters": params},
        "tasks": {"lambada": {"config_hash": "cfg0", "template_hash": "tpl0", "output_type": "loglikelihood"}},
        "records": [{"task": "lambada", "shots": 0, "metric": "perplexity", "value": value, "stderr": se, "n": len(lls)}],
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.mark.parametrize("old_keys", [False, True], ids=["loglikelihood_key", "old_perplexity_key"])
def test_huge_perplexity_gap_is_starred(tmp_path: Path, old_keys: bool, capsys) -> None:
    rng = np.random.default_rng(3)
    n = 200
    good = rng.normal(-2.0, 0.5, n)
    # The worse model is fine on most passages and catastrophic on one in ten: a ~13,000x perplexity gap whose
    # exponentiated bootstrap spreads so wide that the gap looked like noise.
    bad = np.where(rng.random(n) < 0.1, -95.0, rng.normal(-2.5, 0.5, n))
    _write_lambada(tmp_path, "good", 2_000_000_000, good, old_keys=old_keys)
    _write_lambada(tmp_path, "bad", 100_000_000, bad, old_keys=old_keys)
    ratio = math.exp(good.mean() - bad.mean())
    assert 5_000 < ratio < 50_000
    assert run_command(_args(str(tmp_path), "--baseline", "good")) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| lambada | perplexity |")]
    assert re.search(r"\(\+[0-9.e+]+\\\*\) \|", row), row
    assert "but tested on the mean per-example log-likelihood" in out


def test_evaluator_logs_the_perplexity_item_as_a_loglikelihood_and_compare_reads_it(tmp_path: Path) -> None:
    from icl_eval.evaluator import Settings, prepare, score_task
    from icl_eval.registry import load_task
    from icl_eval.requests import LoglikelihoodResult

    from fakes import ScriptedModel

    def Scripted() -> ScriptedModel:
        return ScriptedModel(score=lambda c, t: -float(len(c) % 7 + 1))

    (tmp_path / "tiny.yaml").write_text("name: tiny\noutput_type: loglikelihood\ntemplate: tiny.jinja\nmetrics: [acc, perplexity]\ndata:\n  local: tiny.jsonl\n")
    (tmp_path / "tiny.jinja").write_text("{% block input %}{{ text }}{% endblock %}{% block target %} {{ answer }}{% endblock %}")
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps({"text": "w " * i, "answer": "x"}) + "\n" for i in range(1, 6)))
    settings = Settings(shots=(0,), data_dir=str(tmp_path))
    run = score_task(prepare(load_task(str(tmp_path / "tiny.yaml")), settings), 0, Scripted(), settings)
    records, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    assert metrics.item_field("perplexity") == "loglikelihood" and metrics.field_metric("loglikelihood") == "perplexity"
    assert all(set(s["metrics"]) == {"acc", "loglikelihood"} and s["metrics"]["loglikelihood"] < 0 for s in samples)
    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "samples" / "tiny_0shot.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    items = load.read_items(run_dir, "tiny", 0)
    ppl = next(r for r in records if r.metric == "perplexity")
    assert metrics.aggregate("perplexity", [m["perplexity"] for m in items.values()])[0] == pytest.approx(ppl.value)


def test_rerun_warns_once_and_names_the_run_used(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="run-a")
    write_run(tmp_path, "mid-medium", MODELS["mid-medium"], run_id="run-b", started_at="2026-11-23T10:00:00+00:00")
    assert cli_main(["compare", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "run run-b" in warnings[0] and "repeats 9 results of run run-a" in warnings[0]
    assert warnings[0].endswith("using the later run run-b for those")


def _mc_run(root: Path, model: str, params: int, n_choices: list[int]) -> Path:
    run_dir = root / model
    (run_dir / "samples").mkdir(parents=True)
    rng = np.random.default_rng(params % 97)
    for k in (0, 1):
        lines = [
            json.dumps({"task": "arc", "shots": k, "doc_id": i, "candidates": [{"text": f"c{j}"} for j in range(c)],
                        "gold": 0, "metrics": {"acc": float(rng.random() < 0.5)}})
            for i, c in enumerate(n_choices)
        ]
        (run_dir / "samples" / f"arc_{k}shot.jsonl").write_text("\n".join(lines) + "\n")
    records = [{"task": "arc", "shots": k, "metric": m, "value": 0.4 + 0.1 * k, "stderr": 0.05, "n": len(n_choices)}
               for k in (0, 1) for m in ("acc", "acc_norm")]
    results = {"icl_eval_version": "0.1.0", "run_id": model, "model": {"name": model, "num_parameters": params},
               "tasks": {"arc": {"config_hash": "c", "template_hash": "t", "output_type": "multiple_choice"}}, "records": records}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_chance_level_from_sample_candidates(tmp_path: Path) -> None:
    _mc_run(tmp_path, "small", 1_000, [4, 4, 2, 5])
    _mc_run(tmp_path, "large", 9_000, [4, 4, 2, 5])
    loaded = load.load([tmp_path])
    chance = load.chance_levels(loaded.columns)
    assert chance == {"arc": pytest.approx((0.25 + 0.25 + 0.5 + 0.2) / 4)}
    params = {c.label: c.num_parameters for c in loaded.columns}
    for metric in ("acc", "acc_norm"):
        rows = loaded.records[loaded.records["metric"] == metric]
        for fig in (plots.scaling_figure("arc", metric, rows, params, chance["arc"]),
                    plots.shots_figure("arc", metric, rows, list(params), chance["arc"])):
            (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("chance")]
            assert list(line.get_ydata()) == pytest.approx([chance["arc"]] * 2)
            assert fig.axes[0].get_ylim()[0] <= chance["arc"]
    # A task that is not multiple choice has no chance level, and a non-accuracy metric gets no line.
    assert "lambada" not in load.chance_levels(load.load([write_run(tmp_path / "ll", "zeta-small", 1)]).columns)


def test_perplexity_plots_on_a_log_axis_with_positive_error_bars(runs: Path) -> None:
    loaded = load.load([runs])
    params = {c.label: c.num_parameters for c in loaded.columns}
    rows = loaded.records[(loaded.records["task"] == "lambada") & (loaded.records["metric"] == "perplexity")].copy()
    rows["stderr"] = rows["value"] * 3  # wider than the value: a symmetric bar would cross zero
    for fig in (plots.scaling_figure("lambada", "perplexity", rows, params), plots.shots_figure("lambada", "perplexity", rows, list(params))):
        ax = fig.axes[0]
        assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
        segments = [seg for coll in ax.collections for seg in coll.get_segments()]
        assert segments and all(np.asarray(seg)[:, 1].min() > 0 for seg in segments)
    acc = loaded.records[(loaded.records["task"] == "lambada") & (loaded.records["metric"] == "acc")]
    assert plots.scaling_figure("lambada", "acc", acc, params).axes[0].get_yscale() == "linear"


def test_report_fits_the_window_and_wide_tables_scroll_in_their_box(runs: Path) -> None:
    loaded, tab = _table(runs)
    html_text = report.build_report(tab, [], loaded.warnings, [str(runs / ("long-folder-name" * 20) / "results.json")])
    style = re.search(r"<style>(.*)</style>", html_text, re.S).group(1)
    rules = {sel.strip(): body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", style)}
    assert "max-width: 1400px" in rules["body"]
    assert "overflow-x: auto" in rules["div.table-wrap"] and "max-width: 100%" in rules["div.table-wrap"]
    assert "max-width: 100%" in rules["figure img"]
    assert re.search(r'<div class="table-wrap">\s*<table class="compare">.*?</table>.*?</div>', html_text, re.S)


def test_run_and_compare_print_a_number_the_same_way(capsys) -> None:
    from icl_eval.results import Record

    for value, stderr in ((0.123456, 0.0123), (1.2345e7, 3.2e6), (0.5, 4e-5)):
        _print_table([Record("t", 0, "m", value, stderr, 10)])
        run_cell = capsys.readouterr().out.splitlines()[-1].split("  ")
        records = pd.DataFrame([("a", "t", "m", 0, value, stderr)], columns=["column", "task", "metric", "shots", "value", "stderr"])
        compare_cell = table.cell_texts(table.build_table(records, [load.Column("a", "a", 1)])).iat[0, 0]
        assert compare_cell in [c.strip() for c in run_cell]
    assert table.cell_texts(table.build_table(records, [load.Column("a", "a", 1)])).iat[0, 0] == "0.5000 ± 4e-05"
