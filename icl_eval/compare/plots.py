"""Scaling plots as PNG bytes: score against parameter count (one line per K), and score against K (one line per model).

Figures are built on `matplotlib.figure.Figure` directly, not pyplot, so no GUI backend is chosen and no global
figure state is touched; PNG output goes through Agg.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from icl_eval.compare.load import Column
from icl_eval.compare.table import lower_is_better

FIGSIZE = (6.4, 4.8)
DPI = 100
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height) of every PNG


@dataclass(frozen=True)
class Plot:
    name: str  # file name, e.g. lambada_acc_vs_params.png
    title: str
    task: str
    png: bytes


def human_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No bbox_inches="tight": it would change the pixel size from figure to figure.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _new_axes(title: str, metric: str, xlabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _errorbar(ax, x: np.ndarray, frame: pd.DataFrame, label: str) -> None:
    yerr = frame["stderr"].fillna(0.0).to_numpy(dtype=float)
    ax.errorbar(x, frame["value"].to_numpy(dtype=float), yerr=yerr, marker="o", capsize=3, label=label)


def _finish(fig: Figure, ax, ticks: Sequence[float], tick_labels: Sequence[str], legend_title: str) -> bytes:
    # Ticks only where there is data: the model sizes or the K values actually run.
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(list(tick_labels))
    # Legend below the axes rather than inside: lines of close models would otherwise run under it.
    n = len(ax.get_legend_handles_labels()[1])
    fig.legend(loc="outside lower center", ncols=min(n, 3), title=legend_title, fontsize="small", title_fontsize="small")
    return _png(fig)


def scaling_plot(task: str, metric: str, records: pd.DataFrame, params: dict[str, int]) -> Plot | None:
    """Score against parameter count on a log axis, one line per shot count (the GPT-3 paper's Figure 3.x)."""
    rows = records[records["column"].isin(params.keys())].assign(params=lambda d: d["column"].map(params))
    if rows.empty:
        return None
    title = f"{task}: {metric} vs model size"
    fig, ax = _new_axes(title, metric, "parameters (log scale)")
    for shots, group in rows.sort_values("params").groupby("shots"):
        _errorbar(ax, group["params"].to_numpy(dtype=float), group, f"{shots}-shot")
    ax.set_xscale("log")
    sizes = sorted(set(rows["params"]))
    png = _finish(fig, ax, sizes, [human_count(s) for s in sizes], "shots (K)")
    return Plot(f"{_safe(task)}_{_safe(metric)}_vs_params.png", title, task, png)


def shots_plot(task: str, metric: str, records: pd.DataFrame, order: Sequence[str]) -> Plot | None:
    """Score against K, one line per model, models listed small to large."""
    if records.empty:
        return None
    title = f"{task}: {metric} vs number of examples in context"
    fig, ax = _new_axes(title, metric, "examples in context (K)")
    for label in order:
        group = records[records["column"] == label].sort_values("shots")
        if not group.empty:
            _errorbar(ax, group["shots"].to_numpy(dtype=float), group, label)
    # symlog keeps K=0 on the axis while spreading 1, 8, 32... as on a log axis.
    ax.set_xscale("symlog", linthresh=1)
    ks = sorted(set(records["shots"]))
    png = _finish(fig, ax, ks, [str(k) for k in ks], "model")
    return Plot(f"{_safe(task)}_{_safe(metric)}_vs_shots.png", title, task, png)


def make_plots(records: pd.DataFrame, columns: Sequence[Column]) -> list[Plot]:
    # Without a parameter count a model has no place on the size axis; it still appears in the K plots.
    params = {c.label: c.num_parameters for c in columns if c.num_parameters}
    order = [c.label for c in columns]
    plots: list[Plot] = []
    for (task, metric), group in records.groupby(["task", "metric"], sort=True):
        for plot in (scaling_plot(task, metric, group, params), shots_plot(task, metric, group, order)):
            if plot is not None:
                plots.append(plot)
    return plots


def write_plots(plots: Sequence[Plot], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in plots:
        path = directory / plot.name
        path.write_bytes(plot.png)
        written.append(path)
    return written
