"""Scores on all / clean / dirty examples from a run's sample logs (the paper's Table C.1).

Per-example metric items come from `samples/<task>_<K>shot.jsonl`; every subset is scored with the metric's own
`metrics.aggregate`, so a clean score is computed exactly like the full one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icl_eval.contamination.report import REPORT_VERSION, dirty_ids, markdown_table
from icl_eval.errors import IclEvalError
from icl_eval.formatting import MISSING, number, percent_text
from icl_eval.results import Record, RunReader


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check a contamination.json before anything expensive runs (a model load, a rescore)."""
    p = Path(path)
    if p.is_dir():
        p = p / "contamination.json"
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IclEvalError(f"--contamination {path}: no report there; give the contamination.json written by `icl-eval contamination`") from None
    except OSError as e:
        raise IclEvalError(f"--contamination {p}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise IclEvalError(f"--contamination {p}: not a JSON report ({e}); is it cut short? write it again with `icl-eval contamination`") from None
    problem = report_problem(report)
    if problem:
        raise IclEvalError(f"--contamination {p}: {problem}; is this a contamination.json written by `icl-eval contamination`?")
    return report


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _object_problem(obj: Any, where: str, keys: tuple[str, ...]) -> str | None:
    if not isinstance(obj, dict):
        return f"'{where}' must be an object, got {type(obj).__name__}"
    missing = next((key for key in keys if key not in obj), None)
    return f"'{where}' has no field '{missing}'" if missing else None


def report_problem(report: Any) -> str | None:
    """What is wrong with a parsed report, in words naming the field, or None: every field rescoring reads."""
    if not isinstance(report, dict):
        return f"the top level must be a JSON object, got {type(report).__name__}"
    version = report.get("report_version", 1)
    if not _is_int(version) or not 1 <= version <= REPORT_VERSION:
        return f"'report_version' {version!r} is not one this icl-eval reads (1 to {REPORT_VERSION}); a newer icl-eval wrote it?"
    if "tasks" not in report:
        return "missing field 'tasks'"
    tasks = report["tasks"]
    if not isinstance(tasks, dict):
        return f"'tasks' must be an object of task name -> entry, got {type(tasks).__name__}"
    for name, task in tasks.items():
        where = f"tasks.{name}"
        problem = _object_problem(task, where, ("n", "examples"))
        if problem:
            return problem
        if not _is_int(task["n"]) or task["n"] < 1:
            return f"'{where}.n' must be a positive integer, got {task['n']!r}"
        if not isinstance(task["examples"], list):
            return f"'{where}.examples' must be a list, got {type(task['examples']).__name__}"
        for i, ex in enumerate(task["examples"]):
            at = f"{where}.examples[{i}]"
            problem = _object_problem(ex, at, ("doc_id", "dirty"))
            if problem:
                return problem
            if not (_is_int(ex["doc_id"]) or isinstance(ex["doc_id"], str)):
                return f"'{at}.doc_id' must be an integer or string, got {ex['doc_id']!r}"
            if not isinstance(ex["dirty"], bool):
                return f"'{at}.dirty' must be true or false, got {ex['dirty']!r}"
    return None


def _relative(clean: float, whole: float) -> float:
    return (clean - whole) / abs(whole) if whole and not math.isnan(whole) and not math.isnan(clean) else math.nan


def rescore_run(report: dict[str, Any], run_dir: Path, records: Sequence[Record | dict], label: str = "") -> list[dict[str, Any]]:
    """One row per (task, shots, metric) that both the run and the report know, from the run's sample logs.
    Records may be Record objects or their JSON dicts."""
    from icl_eval.metrics import METRICS, value

    reader = RunReader(run_dir)
    rows = []
    logs: dict[tuple[str, int], dict | None] = {}
    dirty_of: dict[str, set[str]] = {}  # task -> its dirty doc ids, spelled as the sample logs key them
    for rec in records:
        rec = rec if isinstance(rec, Record) else Record.from_json(rec)
        task, shots, metric = rec.task, rec.shots, rec.metric
        if task not in report["tasks"] or metric not in METRICS:
            continue
        if (task, shots) not in logs:
            logs[(task, shots)] = reader.items(task, shots)
        items = logs[(task, shots)]
        if items is None:
            continue
        if task not in dirty_of:
            dirty_of[task] = {json.dumps(d) for d in dirty_ids(report, task)}
        dirty = dirty_of[task]
        subsets: dict[str, list] = {"all": [], "clean": [], "dirty": []}
        for doc, m in items.items():
            if m.get(metric) is None:
                continue
            subsets["all"].append(m[metric])
            subsets["dirty" if doc in dirty else "clean"].append(m[metric])
        scores = {name: value(metric, xs) if xs else math.nan for name, xs in subsets.items()}
        rows.append({
            "model": label, "task": task, "shots": shots, "metric": metric, "n_ngram": report["tasks"][task]["n"],
            "all": scores["all"], "n_all": len(subsets["all"]), "clean": scores["clean"], "n_clean": len(subsets["clean"]),
            "dirty": scores["dirty"], "n_dirty": len(subsets["dirty"]),
            "percent_clean": 100.0 * len(subsets["clean"]) / len(subsets["all"]) if subsets["all"] else math.nan,
            "relative_change": _relative(scores["clean"], scores["all"]),
        })
    return rows


def _score(x: float) -> str:
    return MISSING if math.isnan(x) else number(x)  # an empty subset has no score


def rescore_table(rows: list[dict[str, Any]]) -> str:
    """Markdown in the paper's Table C.1 columns; the relative change is clean vs all."""
    with_model = any(r["model"] for r in rows)
    headers = (["model"] if with_model else []) + ["task", "shots", "metric", "N", "all", "dirty", "dirty n", "clean", "clean n", "% clean", "clean vs all"]
    body = []
    for r in rows:
        rel = percent_text(100 * r["relative_change"], signed=True)
        rel += "%" if rel != MISSING else ""
        body.append(([r["model"]] if with_model else []) + [
            r["task"], str(r["shots"]), r["metric"], str(r["n_ngram"]), _score(r["all"]), _score(r["dirty"]), str(r["n_dirty"]),
            _score(r["clean"]), str(r["n_clean"]), percent_text(r["percent_clean"]), rel,
        ])
    return markdown_table(headers, body)


def rescore_runs(report: dict[str, Any], runs: list[tuple[str, Path, list[dict]]]) -> tuple[list[dict[str, Any]], str]:
    """Rows and their table for (label, run folder, records) triples; a note when no sample logs matched."""
    rows = [row for label, run_dir, records in runs for row in rescore_run(report, run_dir, records, label)]
    if not rows:
        known = ", ".join(sorted(report["tasks"]))
        return rows, f"contamination: no sample logs for the report's tasks ({known}); runs need per-example logs (no --no-log-samples)\n"
    return rows, "Scores on all / dirty / clean examples (contamination report); clean vs all is the relative change.\n\n" + rescore_table(rows)


def write_rescore(run_dir: Path, rows: list[dict[str, Any]], table: str) -> None:
    from icl_eval.results import atomic_write

    # NaN (an empty subset) is not JSON: write null.
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows]
    atomic_write(run_dir / "contamination_scores.json", json.dumps(clean, indent=1) + "\n")
    atomic_write(run_dir / "contamination_scores.md", table)
