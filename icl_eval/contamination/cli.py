"""The `contamination` subcommand: index the tasks, scan the corpus (or read the cache), write the report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_eval.contamination import cache, engines
from icl_eval.contamination.corpus import expand
from icl_eval.contamination.index import EvalIndex, index_tasks, parse_ngram
from icl_eval.contamination.report import build_report, summary_table
from icl_eval.contamination.scan import ScanOptions, merge
from icl_eval.errors import IclEvalError
from icl_eval.results import atomic_write

SKIPPED_SHOWN = 10  # problems named in the printed summary; the report keeps up to corpus.MAX_PROBLEMS_KEPT


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "contamination",
        help="n-gram overlap of tasks with a training corpus (GPT-3 Appendix C)",
        description="Flag evaluation examples whose n-grams occur in a training corpus, the GPT-3 paper's way.",
    )
    p.add_argument("--tasks", required=True, help="comma-separated task names or YAML paths")
    p.add_argument("--corpus", required=True, action="append", metavar="PATH_OR_GLOB",
                   help="corpus files: path, quoted glob or fsspec URL; .jsonl/.txt/.parquet, optionally .gz/.zst (repeatable)")
    p.add_argument("--ngram", default="13", help="n-gram length in words, or 'gpt3' (5th-percentile example length clamped to [8, 13])")
    p.add_argument("--engine", default="local", choices=engines.ENGINES, help="local process pool (default) or Dask")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Dask scheduler to use (default: start a LocalCluster)")
    p.add_argument("--workers", type=int, default=None, help="processes or Dask workers (default: CPU count)")
    p.add_argument("--output", default="contamination", help="output folder for contamination.json and .md (default contamination/)")
    p.add_argument("--text-field", default="text", help="JSON field or parquet column holding a document's text (default text)")
    p.add_argument("--boilerplate", type=int, default=10, help="ignore n-grams found in more than this many documents (default 10)")
    p.add_argument("--cache-dir", default=None, help=f"scan cache folder (default {cache.default_dir()})")
    p.add_argument("--no-cache", action="store_true", help="always scan, and do not store the scan")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR", help="extra folder of task YAML files and templates")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="local data root laid out like shared/data (default: $ICL_EVAL_DATA_DIR)")
    p.add_argument("--seed", type=int, default=1234, help="seed passed to generated tasks (default 1234)")
    return p


@dataclass
class Outcome:
    report: dict[str, Any]
    from_cache: bool
    seconds: float


def check(index: EvalIndex, corpus: list[str], options: ScanOptions, engine: str = "local", workers: int | None = None,
          scheduler: str | None = None, cache_dir: Path | None = None) -> Outcome:
    """Scan `corpus` for the indexed examples (or reuse a cached scan) and build the report."""
    if options.boilerplate < 1:
        raise IclEvalError(f"--boilerplate {options.boilerplate}: must be >= 1 (the paper used 10)")
    if workers is not None and workers < 1:
        raise IclEvalError(f"--workers {workers}: must be >= 1")
    start = time.perf_counter()
    shards = expand(corpus)
    key = cache.scan_key(shards, index.table, options)
    cached = cache.load(cache_dir, key, index.table) if cache_dir else None
    if cached is None:
        results = engines.run(index.table, shards, options, engine, workers, scheduler)
        refs, problems, totals = merge(results, options.boilerplate)
        totals.update(engine=engine, workers=workers or os.cpu_count(), wall_seconds=round(time.perf_counter() - start, 3))
        if cache_dir:
            cache.save(cache_dir, key, index.table, refs, problems, totals)
    else:
        refs, problems, totals = cached
    scan = {**totals, "cache_key": key, "corpus": corpus, "text_field": options.text_field}
    skipped = {"counts": problems.counts, "first": problems.examples}
    return Outcome(build_report(index, refs, options.boilerplate, skipped, scan), cached is not None, time.perf_counter() - start)


def run_command(args: argparse.Namespace) -> int:
    from icl_eval.registry import load_tasks

    parse_ngram(args.ngram)  # before the tasks load: a typo costs nothing
    for option, value in (("--workers", args.workers), ("--boilerplate", args.boilerplate)):
        if value is not None and value < 1:
            raise IclEvalError(f"{option} {value}: must be >= 1")
    tasks = load_tasks(args.tasks, args.include_path)
    index = index_tasks(tasks, args.ngram, args.data_dir, args.seed)
    options = ScanOptions(text_field=args.text_field, boilerplate=args.boilerplate)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else cache.default_dir()
    outcome = check(index, args.corpus, options, args.engine, args.workers, args.scheduler, cache_dir)
    report = outcome.report
    out = Path(args.output)
    table = summary_table(report)
    atomic_write(out / "contamination.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write(out / "contamination.md", table)
    scan = report["scan"]
    where = "from the cache" if outcome.from_cache else f"with the {scan.get('engine')} engine"
    print(f"scanned {scan['files']} files, {scan['docs']:,} documents, {scan['chars'] / 1e6:,.1f} M characters {where} in {outcome.seconds:.1f} s")
    sys.stdout.write(table)
    skipped = report["skipped_input"]
    if skipped["counts"]:
        counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(skipped["counts"].items()))
        print(f"skipped input: {counts} (the first {len(skipped['first'])} in {out / 'contamination.json'}):", file=sys.stderr)
        for where in skipped["first"][:SKIPPED_SHOWN]:
            print(f"  {where}", file=sys.stderr)
        if len(skipped["first"]) > SKIPPED_SHOWN:
            print(f"  ... {sum(skipped['counts'].values()) - SKIPPED_SHOWN} more", file=sys.stderr)
    print(out / "contamination.json")
    return 0
