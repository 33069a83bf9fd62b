"""The comparison table as pure pandas: rows task x metric x shots, one column per model.

Numbers stay numeric in `Table`; `cell_texts` turns them into "value ± stderr" strings and
leaves how a best cell is emphasised to the output format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from icl_eval.compare.load import Column
from icl_eval.compare.significance import ALPHA, Significance
from icl_eval.errors import IclEvalError
from icl_eval.formatting import number, value_stderr
from icl_eval.metrics import lower_is_better

ROW_KEYS = ["task", "metric", "shots"]
MISSING = "—"
SIGNIFICANT_MARK = "*"
UNTESTED_MARK = "†"

RowKey = tuple[str, str, int]


@dataclass(frozen=True)
class Table:
    values: pd.DataFrame  # index ROW_KEYS, columns = model labels in display order
    stderrs: pd.DataFrame
    best: pd.DataFrame  # bool, True where a cell is the best of its row
    baseline: str | None = None
    deltas: pd.DataFrame | None = None  # value minus the baseline's value
    tests: dict[tuple[RowKey, str], Significance] = field(default_factory=dict)
    bootstrap: tuple[int, int] | None = None  # (resamples, seed), for the footnote
    # An extra text column after the models (the GPT-3 paper's numbers, compare/reference.py): outside `values`,
    # so it never takes part in the best-cell marks or the baseline differences.
    reference: pd.Series | None = None  # index ROW_KEYS tuples -> cell text
    reference_label: str = ""
    reference_note: str = ""


def _check_known(kind: str, wanted: Sequence[str] | None, available: Sequence[str], flag: str) -> None:
    if not wanted:
        return
    unknown = [w for w in wanted if w not in set(available)]
    if unknown:
        raise IclEvalError(
            f"{flag}: unknown {kind} {', '.join(repr(u) for u in unknown)}; the results hold {', '.join(sorted(available))}"
        )


def select(records: pd.DataFrame, tasks: Sequence[str] | None = None, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    _check_known("task", tasks, sorted(records["task"].unique()), "--tasks")
    if tasks:
        records = records[records["task"].isin(tasks)]
    _check_known("metric", metrics, sorted(records["metric"].unique()), "--metrics")
    if metrics:
        records = records[records["metric"].isin(metrics)]
    return records


def _best_mask(values: pd.DataFrame) -> pd.DataFrame:
    lower = np.array([lower_is_better(m) for m in values.index.get_level_values("metric")], dtype=bool)
    signed = values.to_numpy(dtype=float) * np.where(lower, -1.0, 1.0)[:, None]
    present = ~np.isnan(signed)
    # A lone value has nothing to beat, so it is not marked.
    contested = present.sum(axis=1) >= 2
    with np.errstate(invalid="ignore"):
        top = np.nanmax(np.where(present, signed, -np.inf), axis=1)
    mask = present & contested[:, None] & np.isclose(signed, top[:, None], rtol=1e-12, atol=0.0)
    return pd.DataFrame(mask, index=values.index, columns=values.columns)


def build_table(records: pd.DataFrame, columns: Sequence[Column]) -> Table:
    if records.empty:
        raise IclEvalError("no records left to compare; widen --tasks/--metrics or check the runs' results.json 'records'")
    order = [c.label for c in columns if c.label in set(records["column"])]

    def pivot(field_name: str) -> pd.DataFrame:
        # load.py keeps one record per (column, task, metric, shots), so unstack cannot meet duplicates.
        wide = records.set_index([*ROW_KEYS, "column"])[field_name].astype(float).unstack("column")
        return wide.reindex(columns=order).sort_index()

    values = pivot("value")
    stderrs = pivot("stderr").reindex(index=values.index)
    values.columns.name = stderrs.columns.name = None
    return Table(values, stderrs, _best_mask(values))


def resolve_baseline(name: str, columns: Sequence[Column]) -> str:
    by_label = [c.label for c in columns if c.label == name]
    by_model = [c.label for c in columns if c.model_name == name]
    if by_label:
        return by_label[0]
    if len(by_model) == 1:
        return by_model[0]
    if by_model:
        raise IclEvalError(
            f"--baseline {name!r} matches {len(by_model)} columns whose runs disagree; pass one of "
            + ", ".join(repr(label) for label in by_model)
        )
    raise IclEvalError(f"--baseline {name!r} is not a model in the results; choose one of " + ", ".join(repr(c.label) for c in columns))


def with_baseline(
    table: Table, baseline: str, tests: dict[tuple[RowKey, str], Significance], n_resamples: int, seed: int
) -> Table:
    deltas = table.values.sub(table.values[baseline], axis=0)
    return replace(table, baseline=baseline, deltas=deltas, tests=dict(tests), bootstrap=(n_resamples, seed))


def _cell(value: float, stderr: float) -> str:
    return MISSING if np.isnan(value) else value_stderr(value, stderr)


def _delta(table: Table, row: RowKey, label: str) -> str:
    delta = table.deltas.at[row, label]
    if label == table.baseline or np.isnan(delta):
        return ""
    test = table.tests.get((row, label))
    mark = UNTESTED_MARK if test is None or test.p_value is None else (SIGNIFICANT_MARK if test.significant else "")
    return f" ({number(delta, signed=True)}{mark})"


def cell_texts(table: Table, emphasise: Callable[[str], str] = lambda s: s) -> pd.DataFrame:
    """Cells as text, best cells passed through `emphasise` (bold in a document, a mark in plain text)."""
    out = pd.DataFrame(index=table.values.index, columns=table.values.columns, dtype=object)
    for row in table.values.index:
        for label in table.values.columns:
            text = _cell(table.values.at[row, label], table.stderrs.at[row, label])
            if table.best.at[row, label]:
                text = emphasise(text)
            if table.deltas is not None:
                text += _delta(table, row, label)
            out.at[row, label] = text
    return out


def footnotes(table: Table, best_marker: str) -> list[str]:
    notes = [f"Cells: value ± standard error. {best_marker.capitalize()}: best in its row (lowest for perplexity-like metrics)."]
    if table.reference_note:
        notes.append(table.reference_note)
    if table.baseline is None:
        return notes
    n_resamples, seed = table.bootstrap or (0, 0)
    notes.append(
        f"In parentheses: difference to the baseline {table.baseline}; {SIGNIFICANT_MARK} p < {ALPHA} "
        f"in a two-sided paired bootstrap over per-example items matched by doc_id ({n_resamples} resamples, seed {seed})."
    )
    untested: dict[tuple[str, str], int] = {}
    for row in table.values.index:
        for label in table.values.columns:
            if label == table.baseline or np.isnan(table.deltas.at[row, label]):
                continue
            test = table.tests.get((row, label))
            if test is None or test.p_value is None:
                reason = test.reason if test is not None else "no per-example sample logs"
                where = f"{row[0]} {row[1]}"
                untested[(where, reason)] = untested.get((where, reason), 0) + 1
    for (where, reason), count in untested.items():
        notes.append(f"{UNTESTED_MARK} not tested for {where} ({count} cells): {reason}.")
    scales = {(row[1], test.scale) for (row, _), test in table.tests.items() if test.scale and row in table.values.index}
    for metric, scale in sorted(scales):
        notes.append(
            f"{metric}: differences are shown in {metric} but tested on the {scale}; {metric} is a monotone "
            f"function of it, and resampling {metric} itself would be distorted by its skew."
        )
    return notes
