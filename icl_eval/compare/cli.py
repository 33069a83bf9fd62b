"""The `compare` subcommand: argument parsing and the side effects (reading logs, printing, writing files)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from icl_eval import metrics
from icl_eval.compare import FORMATS

if TYPE_CHECKING:
    import pandas as pd

    from icl_eval.compare.significance import Score, Significance
    from icl_eval.compare.table import RowKey

# pandas and matplotlib load inside the functions below: every `icl-eval run` builds this parser, and importing
# them here was a tenth of its start-up.


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="compare run results across models: tables, scaling plots, an HTML report",
        description="Compare `icl-eval run` results across models: a table with models as columns ordered by "
        "parameter count, scaling plots, and a self-contained HTML report.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="results.json files or directories searched recursively")
    parser.add_argument("--tasks", type=_csv_list, help="comma-separated tasks to keep")
    parser.add_argument("--metrics", type=_csv_list, help="comma-separated metrics to keep")
    parser.add_argument("--format", choices=FORMATS, default="md", help="table format on stdout (default: md)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--report", type=Path, metavar="FILE.html", help="write one self-contained HTML report")
    parser.add_argument("--baseline", metavar="MODEL", help="show differences to MODEL, with paired-bootstrap significance")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --baseline (default: 1000)")
    parser.add_argument("--seed", type=int, default=1234, help="bootstrap seed for --baseline (default: 1234)")
    parser.add_argument("--contamination", metavar="REPORT", help="contamination.json: add all / clean / dirty scores per metric")
    return parser


def collect_tests(
    records: pd.DataFrame,
    baseline: str,
    score: Score | None = metrics.value,
    n_resamples: int = 1000,
    seed: int = 1234,
    read_items: Callable[[Path, str, int], dict[str, dict] | None] | None = None,
) -> dict[tuple[RowKey, str], Significance]:
    """Paired-bootstrap every non-baseline cell against the baseline, reading each samples file once
    (`read_items` defaults to the run folders' sample logs)."""
    from icl_eval.compare import load, table
    from icl_eval.compare.significance import Significance, paired_bootstrap

    read_items = read_items or load.read_items
    cache: dict[tuple[Path, str, int], dict[str, dict] | None] = {}

    def items(run_dir: Path, task: str, shots: int, metric: str) -> dict[str, object] | None:
        key = (run_dir, task, shots)
        if key not in cache:
            cache[key] = read_items(run_dir, task, shots)
        logged = cache[key]
        if logged is None:
            return None
        return {doc: m[metric] for doc, m in logged.items() if m.get(metric) is not None}

    base_rows = records[records["column"] == baseline].set_index(table.ROW_KEYS)["run_dir"]
    tests: dict[tuple[RowKey, str], Significance] = {}
    for rec in records[records["column"] != baseline].itertuples(index=False):
        row = (rec.task, rec.metric, rec.shots)
        if row not in base_rows.index:
            continue
        base_items = items(base_rows[row], rec.task, rec.shots, rec.metric)
        other_items = items(rec.run_dir, rec.task, rec.shots, rec.metric)
        if base_items is None or other_items is None:
            tests[(row, rec.column)] = Significance(None, 0, "no per-example sample logs")
            continue
        tests[(row, rec.column)] = paired_bootstrap(
            rec.metric, base_items, other_items, score=score, n_resamples=n_resamples, seed=seed
        )
    return tests


def run_command(args: argparse.Namespace) -> int:
    from icl_eval.compare import formats, load, plots, reference, report, table

    loaded = load.load(args.results)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    records = table.select(loaded.records, args.tasks, args.metrics)
    result = reference.with_paper(table.build_table(records, loaded.columns), loaded.columns)  # the GPT-3 paper's column
    if args.baseline:
        baseline = table.resolve_baseline(args.baseline, loaded.columns)
        tests = collect_tests(records, baseline, metrics.value, args.resamples, args.seed)
        result = table.with_baseline(result, baseline, tests, args.resamples, args.seed)
    # Everything that reads files comes before the first output, so bad input stops before a half-printed table.
    chance = load.chance_levels(loaded.columns, set(records["task"])) if (args.plot or args.report) else {}
    sys.stdout.write(formats.render(result, args.format))
    if args.contamination:
        from icl_eval.contamination.rescore import load_report, rescore_runs

        keep = lambda r: (not args.tasks or r.task in args.tasks) and (not args.metrics or r.metric in args.metrics)  # noqa: E731
        runs = [(c.label, run.run_dir, [r for r in run.records if keep(r)]) for c in loaded.columns for run in c.runs]
        sys.stdout.write("\n" + rescore_runs(load_report(args.contamination), runs)[1])
    figures = plots.make_plots(records, loaded.columns, chance) if (args.plot or args.report) else []
    if args.plot:
        written = plots.write_plots(figures, args.plot)
        print(f"wrote {len(written)} plots to {args.plot}", file=sys.stderr)
    if args.report:
        sources = [str(run.path) for column in loaded.columns for run in column.runs]
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.build_report(result, figures, loaded.warnings, sources), encoding="utf-8")
        print(f"wrote report to {args.report}", file=sys.stderr)
    return 0
