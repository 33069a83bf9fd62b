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
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from icl_eval.compare.load import Column
from icl_eval.compare.reference import draw_paper_curves
from icl_eval.formatting import number
from icl_eval.metrics import METRICS, lower_is_better

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


def log_scale(metric: str, values: np.ndarray) -> bool:
    """Perplexity-like metrics (lower is better, positive) span orders of magnitude between models: a log axis."""
    finite = values[np.isfinite(values)]
    return lower_is_better(metric) and finite.size > 0 and bool((finite > 0).all())


def _new_axes(title: str, metric: str, xlabel: str, log_y: bool) -> tuple[Figure, object]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    better = "lower" if lower_is_better(metric) else "higher"
    ax.set_ylabel(f"{metric} ({better} is better{', log scale' if log_y else ''})")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _errorbar(ax, x: np.ndarray, frame: pd.DataFrame, label: str, log_y: bool) -> None:
    y = frame["value"].to_numpy(dtype=float)
    se = frame["stderr"].fillna(0.0).to_numpy(dtype=float)
    keep = np.isfinite(y) & np.isfinite(se)  # an overflowed perplexity (inf) has no place on the axis
    x, y, se = x[keep], y[keep], se[keep]
    if log_y:
        # value * exp(-+se/value): for perplexity (se = value * se of the mean log-likelihood, the delta method)
        # exactly one standard error either way on the log-likelihood scale, and never below zero.
        ratio = np.exp(se / y)
        yerr = np.vstack([y - y / ratio, y * ratio - y])
    else:
        yerr = se
    ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=label)


def _chance(ax, metric: str, chance: float | None) -> None:
    # Guessing among the candidates is the floor of an accuracy over choices; other metrics of the task have none.
    known = METRICS.get(metric)
    if chance is not None and known is not None and "multiple_choice" in known.output_types:
        ax.axhline(chance, color="0.35", linestyle="--", linewidth=1, label=f"chance ({number(chance)})")


def _finish(fig: Figure, ax, ticks: Sequence[float], tick_labels: Sequence[str], legend_title: str) -> Figure:
    # Ticks only where there is data: the model sizes or the K values actually run.
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(list(tick_labels))
    if ax.get_yscale() == "log":
        # Plain numbers (12, 3.5) rather than 1.2x10^1; minor ticks labelled only when there are few decades.
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if high / low < 100 else NullFormatter())
    # Legend below the axes rather than inside: lines of close models would otherwise run under it.
    n = len(ax.get_legend_handles_labels()[1])
    fig.legend(loc="outside lower center", ncols=min(n, 3), title=legend_title, fontsize="small", title_fontsize="small")
    return fig


def scaling_figure(
    task: str, metric: str, records: pd.DataFrame, params: dict[str, int], chance: float | None = None
) -> Figure | None:
    """Score against parameter count on a log axis, one line per shot count (the GPT-3 paper's Figure 3.x)."""
    rows = records[records["column"].isin(params.keys())].assign(params=lambda d: d["column"].map(params))
    if rows.empty:
        return None
    log_y = log_scale(metric, rows["value"].to_numpy(dtype=float))
    fig, ax = _new_axes(f"{task}: {metric} vs model size", metric, "parameters (log scale)", log_y)
    for shots, group in rows.sort_values("params").groupby("shots"):
        _errorbar(ax, group["params"].to_numpy(dtype=float), group, f"{shots}-shot", log_y)
    draw_paper_curves(ax, task, metric, sorted(set(rows["shots"])))  # the GPT-3 paper's sizes, where it has the task
    _chance(ax, metric, chance)
    ax.set_xscale("log")
    sizes = sorted(set(rows["params"]))
    return _finish(fig, ax, sizes, [human_count(s) for s in sizes], "shots (K)")


def shots_figure(
    task: str, metric: str, records: pd.DataFrame, order: Sequence[str], chance: float | None = None
) -> Figure | None:
    """Score against K, one line per model, models listed small to large."""
    if records.empty:
        return None
    log_y = log_scale(metric, records["value"].to_numpy(dtype=float))
    fig, ax = _new_axes(f"{task}: {metric} vs number of examples in context", metric, "examples in context (K)", log_y)
    for label in order:
        group = records[records["column"] == label].sort_values("shots")
        if not group.empty:
            _errorbar(ax, group["shots"].to_numpy(dtype=float), group, label, log_y)
    _chance(ax, metric, chance)
    # symlog keeps K=0 on the axis while spreading 1, 8, 32... as on a log axis.
    ax.set_xscale("symlog", linthresh=1)
    ks = sorted(set(records["shots"]))
    return _finish(fig, ax, ks, [str(k) for k in ks], "model")


def _plot(fig: Figure | None, task: str, metric: str, kind: str) -> Plot | None:
    if fig is None:
        return None
    return Plot(f"{_safe(task)}_{_safe(metric)}_vs_{kind}.png", fig.axes[0].get_title(), task, _png(fig))


def make_plots(records: pd.DataFrame, columns: Sequence[Column], chance: dict[str, float] | None = None) -> list[Plot]:
    """Both plots of every task and metric; `chance` (task -> accuracy of guessing) adds a chance line."""
    # Without a parameter count a model has no place on the size axis; it still appears in the K plots.
    params = {c.label: c.num_parameters for c in columns if c.num_parameters}
    order = [c.label for c in columns]
    chance = chance or {}
    plots: list[Plot] = []
    for (task, metric), group in records.groupby(["task", "metric"], sort=True):
        level = chance.get(task)
        for fig, kind in ((scaling_figure(task, metric, group, params, level), "params"), (shots_figure(task, metric, group, order, level), "shots")):
            plot = _plot(fig, task, metric, kind)
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
