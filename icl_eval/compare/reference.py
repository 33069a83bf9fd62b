"""The GPT-3 paper as a reference in `icl-eval compare`: a table column and a dashed curve on the size plots.

Both read icl_eval.paper and convert its numbers to icl-eval's scale for the metric (accuracy 42.7% -> 0.427,
BLEU and perplexity unchanged), so they sit on the same axes as the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from icl_eval.compare.load import Column
from icl_eval.compare.table import Table
from icl_eval.formatting import number
from icl_eval.paper import TABLE, gpt3_rows, nearest, setting_for, to_icl_scale

PAPER_LABEL = "GPT-3 (paper)"
COLUMN_TITLE = "GPT-3 at the nearest size"


def reference_size(table: Table, columns: Sequence[Column]) -> int | None:
    """The parameter count the paper column is matched to: the largest model in the comparison (the one a reader
    most wants to set against GPT-3), among the columns the table shows."""
    sizes = [c.num_parameters for c in columns if c.num_parameters and c.label in table.values.columns]
    return max(sizes) if sizes else None


def with_paper(table: Table, columns: Sequence[Column]) -> Table:
    """The table with a column of the paper's value per row at the GPT-3 size nearest the largest compared model.
    A row at a K > 1 that is not the paper's few-shot K shows the paper's few-shot number marked with its K.
    Unchanged when no row has a paper number or no model has a parameter count."""
    size = reference_size(table, columns)
    if size is None:
        return table
    cells: dict[tuple, str] = {}
    size_text = ""
    for task, metric, shots in table.values.index:
        row = nearest(task, metric, int(shots), size)
        if row is None:
            continue
        size_text = row.size
        note = f" (K={row.k_fewshot})" if row.shots != shots else ""
        cells[(task, metric, shots)] = number(to_icl_scale(row, metric)) + note
    if not cells:
        return table
    label = f"{COLUMN_TITLE}, {size_text}"
    return replace(table, reference=pd.Series(cells, dtype=object), reference_label=label,
                   reference_note=f"{label}: the GPT-3 paper's number ({TABLE}, Brown et al. 2020) at the GPT-3 size nearest "
                   f"the largest model compared, on icl-eval's scale; (K=N): the paper's few-shot number, measured at K=N.")


def _setting_text(setting: str, k: int | None) -> str:
    if setting == "few":
        return "few-shot" + (f" K={k}" if k else "")
    return "0-shot" if setting == "zero" else "1-shot"


def draw_paper_curves(ax, task: str, metric: str, shots: Sequence[int]) -> int:
    """Dashed curves of the paper's eight sizes, one per setting the plotted K values map to, each in the colour
    of the run line it compares with. Returns how many were drawn."""
    colours = {c.get_label(): c.lines[0].get_color() for c in ax.containers if getattr(c, "lines", None)}
    rows = gpt3_rows(task, metric)
    drawn = 0
    for setting in dict.fromkeys(setting_for(int(k)) for k in shots):
        curve = [r for r in rows if r.setting == setting]
        if not curve:
            continue
        ks = [int(k) for k in shots if setting_for(int(k)) == setting]
        match = curve[0].shots if curve[0].shots in ks else max(ks)
        x = np.array([r.params for r in curve], dtype=float)
        y = np.array([to_icl_scale(r, metric) for r in curve], dtype=float)
        ax.plot(x, y, linestyle="--", marker=".", linewidth=1.2, alpha=0.8, color=colours.get(f"{match}-shot"),
                label=f"{PAPER_LABEL}, {_setting_text(setting, curve[0].k_fewshot)}")
        drawn += 1
    return drawn
