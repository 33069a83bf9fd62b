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

from icl_eval.compare import formats, load, plots, table
from icl_eval.cli import main as cli_main
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
) -> Path:
    run_dir = root / (run_id or model)
    (run_dir / "samples").mkdir(parents=True)
    records = []
    for task in tasks:
        for k in SHOTS:
            items = _items(model, task, k)
            lines = []
            for doc in range(N_DOCS):
                lines.append(json.dumps({"task": task, "shots": k, "doc_id": doc, "metrics": {m: v[doc] for m, v in items.items()}}))
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
    assert cells.at[("triviaqa", "exact_match", 1), "mid-medium"] == f"{value:.3f} ± {se:.3f}"
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
    assert table.cell_texts(table.build_table(records, cols)).at[("t", "perplexity", 0), "a"] == "9.000"


def test_significance_marks_clear_difference_not_identical_copy(runs: Path) -> None:
    write_run(runs, "zeta-small-copy", MODELS["zeta-small"])
    loaded = load.load([runs])
    tab = table.build_table(loaded.records, loaded.columns)
    tests = collect_tests(loaded.records, "zeta-small", None, 1000, 1234)
    tab = table.with_baseline(tab, "zeta-small", tests, 1000, 1234)
    row = ("lambada", "acc", 32)
    assert tests[(row, "alpha-large")].significant
    assert tests[(row, "alpha-large")].p_value < 0.01
    assert tests[(row, "zeta-small-copy")].p_value == 1.0
    cells = table.cell_texts(tab)
    assert re.search(r"\(\+0\.\d{3}\*\)$", cells.at[row, "alpha-large"])
    assert cells.at[row, "zeta-small-copy"].endswith("(+0.000)")
    assert "(" not in cells.at[row, "zeta-small"]  # the baseline shows no difference to itself
    # Perplexity has no harness aggregate in this test, so it is left untested and the footnote says why.
    assert cells.at[("lambada", "perplexity", 0), "alpha-large"].endswith(f"{table.UNTESTED_MARK})")
    assert any("perplexity needs icl_eval.metrics.value" in n for n in table.footnotes(tab, "bold"))


def test_bootstrap_is_seeded_and_uses_the_harness_score_for_perplexity() -> None:
    rng = np.random.default_rng(0)
    base = {str(i): float(x) for i, x in enumerate(rng.normal(-2, 0.5, 150))}
    better = {k: v + 0.5 for k, v in base.items()}
    first = paired_bootstrap("acc", base, better, seed=7)
    assert first == paired_bootstrap("acc", base, better, seed=7)
    assert first.significant and first.n_pairs == 150
    calls = []

    def score(metric: str, items: list) -> float:
        calls.append(metric)
        return _perplexity(items)[0]

    ppl = paired_bootstrap("perplexity", base, better, score=score, n_resamples=200)
    assert ppl.significant and len(calls) == 2 + 2 * 200
    assert paired_bootstrap("perplexity", base, better).p_value is None
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


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_each_output_format(runs: Path, fmt: str, capsys) -> None:
    assert run_command(_args(str(runs), "--format", fmt, "--baseline", "zeta-small", "--metrics", "acc,exact_match")) == 0
    out = capsys.readouterr().out
    if fmt == "md":
        lines = out.splitlines()
        assert lines[0] == "| task | metric | shots | zeta-small | mid-medium | alpha-large |"
        assert lines[1].startswith("| --- | --- | ---: |")
        assert re.search(r"\| \*\*0\.\d{3} ± 0\.\d{3}\*\* \(\+0\.\d{3}\\\*\) \|$", lines[2])
        assert "p < 0.05" in out
    elif fmt == "csv":
        frame = pd.read_csv(io.StringIO(out))
        assert list(frame.columns) == ["task", "metric", "shots", "zeta-small", "mid-medium", "alpha-large"]
        assert len(frame) == 6 and frame["alpha-large"].str.contains(r"\(best\) \(\+").all()
    elif fmt == "html":
        assert out.startswith('<table class="compare">') and "<strong>" in out and "<th>alpha-large</th>" in out
    else:
        assert out.startswith("\\begin{tabular}{llrrrr}") and "\\textbf{" in out and "$\\pm$" in out
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
