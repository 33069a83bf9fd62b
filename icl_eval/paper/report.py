"""`icl-eval run`'s lines comparing a run with the GPT-3 paper at the nearest model size."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from icl_eval.paper import TABLE, nearest, paper_metrics, shots_label


def paper_lines(records: Iterable[Any], num_parameters: int | None) -> list[str]:
    """One line per (task, shots) of the run for which the paper has a number, e.g.
    `GPT-3 (paper, Table H.1) at the nearest size, 125M (GPT-3 Small): lambada 0-shot acc 42.7%, ppl 18.6`.

    `records` are the run's records (anything with task, shots and metric). A K other than 0, 1 or the paper's own
    few-shot K is shown against the paper's few-shot number, labelled with the K it was measured at."""
    if not num_parameters:
        return []
    cells: dict[tuple[str, int], list[str]] = {}
    for rec in records:
        names = cells.setdefault((rec.task, int(rec.shots)), [])
        for m in paper_metrics(rec.task, rec.metric):
            if m not in names:
                names.append(m)
    lines = []
    for (task, shots), metrics in cells.items():
        rows = [r for r in (nearest(task, m, shots, num_parameters) for m in metrics) if r is not None]
        if not rows:
            continue
        note = shots_label(rows[0], shots)
        values = ", ".join(f"{r.metric} {r.shown}" for r in rows)
        lines.append(f"GPT-3 (paper, {TABLE}) at the nearest size, {rows[0].size}: {task} {shots}-shot{f' ({note})' if note else ''} {values}")
    return lines
