"""Find and load `icl-eval run` results, and group runs into the columns of a comparison.

Runs of one model are merged into one column only when they agree on everything that changes a score
(package version, model fingerprint, chat template or plain prompts, each shared task's config and template hash); otherwise each
compatible group becomes its own, distinctly labelled column and a warning says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icl_eval.errors import IclEvalError
from icl_eval.results import RESULTS_NAME, Record, RunReader

RECORD_COLUMNS = ["column", "task", "metric", "shots", "value", "stderr", "n", "run_dir"]


@dataclass(frozen=True)
class TaskInfo:
    config_hash: str | None
    template_hash: str | None
    output_type: str | None = None


@dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    started_at: str
    version: str
    model_name: str
    num_parameters: int | None
    fingerprint: str | None
    tasks: dict[str, TaskInfo]
    records: list[Record]
    chat: str | None = None  # the chat template's hash and turn layout (--chat-template); None: plain prompts

    @property
    def run_dir(self) -> Path:
        return self.path.parent


@dataclass
class Column:
    """One model column of the comparison: one run, or several compatible runs of the same model."""

    label: str
    model_name: str
    num_parameters: int | None
    runs: list[Run] = field(default_factory=list)


@dataclass
class Loaded:
    columns: list[Column]
    records: pd.DataFrame
    warnings: list[str]


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(RESULTS_NAME)))
        else:
            raise IclEvalError(f"{path}: no such file or directory; pass results.json files or run directories")
    # The same file reached twice (a dir and a file inside it) must not become two runs.
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        shown = ", ".join(str(p) for p in paths)
        raise IclEvalError(f"no {RESULTS_NAME} found under {shown}; pass the output directory of `icl-eval run`")
    return unique


def load_run(path: Path) -> Run:
    result = RunReader(path).result()
    return Run(
        path=path,
        run_id=result.run_id,
        started_at=result.started_at,
        version=result.icl_eval_version or "unknown",
        model_name=str(result.model["name"]),
        num_parameters=result.model.get("num_parameters"),
        fingerprint=result.model.get("fingerprint"),
        tasks={name: TaskInfo(t.config_hash, t.template_hash, t.output_type) for name, t in result.tasks.items()},
        records=result.records,
        chat=_chat_label(result.settings.get("chat_template")),
    )


def _chat_label(chat) -> str | None:
    if not isinstance(chat, dict):
        return None
    return f"chat template {str(chat.get('template_sha256'))[:12]} ({'multi-turn' if chat.get('fewshot_as_multiturn') else 'single-turn'})"


def _conflicts(a: Run, b: Run) -> list[str]:
    """Reasons two runs of the same model must not share a column."""
    reasons = []
    if a.version != b.version:
        reasons.append(f"icl_eval_version {a.version} vs {b.version}")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        reasons.append(f"model fingerprint {a.fingerprint[:12]} vs {b.fingerprint[:12]}")
    if a.chat != b.chat:  # a chat-rendered prompt and a plain one are different prompts, whatever the task files say
        reasons.append(f"{a.chat or 'plain prompts'} vs {b.chat or 'plain prompts'}")
    for task in sorted(a.tasks.keys() & b.tasks.keys()):
        for attr in ("config_hash", "template_hash"):
            x, y = getattr(a.tasks[task], attr), getattr(b.tasks[task], attr)
            if x and y and x != y:
                reasons.append(f"{task} {attr} {x[:12]} vs {y[:12]}")
    return reasons


def _group_model_runs(runs: list[Run]) -> tuple[list[list[Run]], list[str]]:
    """Greedy grouping in start order: a run joins the first group it has no conflict with."""
    groups: list[list[Run]] = []
    reasons: list[str] = []
    for run in sorted(runs, key=lambda r: (r.started_at, str(r.path))):
        for group in groups:
            found = [(member, _conflicts(member, run)) for member in group]
            found = [f"{', '.join(why)} (between {member.path} and {run.path})" for member, why in found if why]
            if not found:
                group.append(run)
                break
            reasons.extend(found)
        else:
            groups.append([run])
    return groups, list(dict.fromkeys(reasons))


def _labels(name: str, groups: list[list[Run]]) -> list[str]:
    if len(groups) == 1:
        return [name]
    versions_differ = len({g[0].version for g in groups}) > 1
    return [
        f"{name} [{'v' + g[0].version + ' ' if versions_differ else ''}run {g[0].run_id}]"
        for g in groups
    ]


def group_columns(runs: Iterable[Run]) -> tuple[list[Column], list[str]]:
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.model_name, []).append(run)
    columns: list[Column] = []
    warnings: list[str] = []
    for name, model_runs in by_model.items():
        groups, reasons = _group_model_runs(model_runs)
        labels = _labels(name, groups)
        if len(groups) > 1:
            warnings.append(
                f"runs of {name} disagree ({'; '.join(reasons)}); not merged, kept as separate columns: "
                + ", ".join(f"'{label}'" for label in labels)
            )
        for label, group in zip(labels, groups):
            params = next((r.num_parameters for r in group if r.num_parameters), None)
            columns.append(Column(label, name, params, group))
    # Models without a parameter count go last: they cannot be placed on the scale.
    # Stable sort: a model's own columns stay in the order its runs started.
    columns.sort(key=lambda c: (c.num_parameters is None, c.num_parameters or 0, c.model_name))
    return columns, warnings


def _records_frame(columns: list[Column]) -> tuple[pd.DataFrame, list[str]]:
    rows: dict[tuple, dict] = {}
    source: dict[tuple, Run] = {}
    # (column, earlier run, later run) -> the results the later run repeats: one warning per pair, not per record.
    repeated: dict[tuple[str, Path, Path], list[tuple]] = {}
    runs_by_path: dict[Path, Run] = {}
    for column in columns:
        for run in column.runs:  # start order, so a later run's record replaces an earlier one
            runs_by_path[run.path] = run
            for rec in run.records:
                key = (column.label, rec.task, rec.metric, rec.shots)
                if key in source:
                    repeated.setdefault((column.label, source[key].path, run.path), []).append(key)
                source[key] = run
                rows[key] = {
                    "column": column.label, "task": rec.task, "metric": rec.metric, "shots": rec.shots, "value": rec.value,
                    "stderr": rec.stderr if rec.stderr is not None else float("nan"), "n": rec.n, "run_dir": run.run_dir,
                }
    warnings = [
        _repeat_warning(label, runs_by_path[earlier], runs_by_path[later], keys)
        for (label, earlier, later), keys in repeated.items()
    ]
    return pd.DataFrame(list(rows.values()), columns=RECORD_COLUMNS), warnings


def _repeat_warning(label: str, earlier: Run, later: Run, keys: list[tuple]) -> str:
    tasks = ", ".join(dict.fromkeys(k[1] for k in keys))
    return (
        f"{label}: run {later.run_id} ({later.path}) repeats {len(keys)} results of run {earlier.run_id} "
        f"({earlier.path}) for {tasks}; using the later run {later.run_id} for those"
    )


def _cross_model_warnings(columns: list[Column]) -> list[str]:
    """Different models scored with different task configs are still shown, but the reader should know."""
    hashes: dict[str, dict[str, set[str]]] = {}
    for column in columns:
        for run in column.runs:
            for task, info in run.tasks.items():
                if info.config_hash:
                    hashes.setdefault(task, {}).setdefault(column.model_name, set()).add(info.config_hash)
    warnings = []
    for task, per_model in sorted(hashes.items()):
        models = sorted(per_model)
        # Same-model disagreements are reported by the grouping; here only models sharing no config count.
        apart = [(a, b) for i, a in enumerate(models) for b in models[i + 1:] if per_model[a].isdisjoint(per_model[b])]
        if apart:
            a, b = apart[0]
            warnings.append(
                f"{task}: {a} and {b} were evaluated with different task configs "
                f"({', '.join(h[:12] for h in sorted(per_model[a] | per_model[b]))}); their columns may not be comparable"
            )
    return warnings


def load(paths: Sequence[str | Path]) -> Loaded:
    runs = [load_run(p) for p in find_results(paths)]
    columns, warnings = group_columns(runs)
    records, overlap = _records_frame(columns)
    return Loaded(columns, records, warnings + overlap + _cross_model_warnings(columns))


def read_items(run_dir: Path, task: str, shots: int) -> dict[str, dict] | None:
    """Per-example metric items of one task and shot count, keyed by doc_id and then by metric (RunReader.items)."""
    return RunReader(run_dir).items(task, shots)


def chance_levels(columns: Sequence[Column], tasks: Iterable[str] | None = None) -> dict[str, float]:
    """Accuracy of guessing uniformly at random, per multiple-choice task: the mean over logged examples of
    1 / number of candidates (the expected accuracy even when examples have different numbers of choices).
    results.json does not hold the number of choices, so it is read from the first sample log found for the
    task; a task without sample logs gets no chance level. `tasks` limits which tasks are looked at."""
    wanted = set(tasks) if tasks is not None else None
    levels: dict[str, float] = {}
    for column in columns:
        for run in column.runs:
            reader = RunReader(run.path)
            for task in dict.fromkeys(rec.task for rec in run.records):
                # The sample logs decide: a task whose examples carry candidates has a chance level.
                if task in levels or (wanted is not None and task not in wanted):
                    continue
                shots = sorted({rec.shots for rec in run.records if rec.task == task})
                logged = next((k for k in shots if reader.has_samples(task, k)), None)
                if logged is None:
                    continue
                candidates = (s.fields.get("candidates") for s in reader.samples(task, logged))
                counts = [len(c) for c in candidates if isinstance(c, list) and c]
                if counts:
                    levels[task] = float(np.mean([1.0 / c for c in counts]))
    return levels
