"""Paired bootstrap test of a score difference between two models on the same examples.

The two-sided p-value is the share of resampled differences at least as far from the observed
difference as the observed difference is from zero (the resampling distribution, shifted to the null).

A metric that is a monotone function of its items' mean (accuracy; perplexity = exp(-mean log-likelihood)) is
tested on the mean of the paired item differences: the two models' metrics differ exactly when their mean items
do, and the mean is what a bootstrap resamples well. Resampling perplexity itself would test an exponentiated,
heavily skewed statistic, and a 13,000x gap could come out "within noise". Only corpus metrics (BLEU, chrF), whose
score is not a function of one mean, are resampled through the harness's own score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from icl_eval import metrics

# The harness's metric value of a list of per-example items (icl_eval.metrics.value): no stderr, which for a
# corpus metric is itself a bootstrap and would be wasted inside this one.
Score = Callable[[str, list], float]

ALPHA = 0.05
# Caps one block of resampled indices at ~32 MB, whatever the number of examples.
_MAX_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Significance:
    p_value: float | None
    n_pairs: int
    reason: str = ""  # why no test was run, when p_value is None
    scale: str = ""  # what was tested, when not the metric itself (e.g. perplexity's mean log-likelihood)

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def _p_value(observed: float, resampled: np.ndarray) -> float:
    extreme = np.count_nonzero(np.abs(resampled - observed) >= abs(observed))
    # +1 on both sides: the observed sample is one of the resamples, so p is never exactly 0.
    return float((extreme + 1) / (resampled.size + 1))


def _bootstrap_mean_diff(diffs: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = diffs.size
    block = max(1, _MAX_BLOCK_CELLS // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = diffs[idx].mean(axis=1)
    return out


def _bootstrap_score(
    metric: str, base: list, other: list, score: Score, n_resamples: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    observed = score(metric, other) - score(metric, base)
    n = len(base)
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        out[b] = score(metric, [other[i] for i in idx]) - score(metric, [base[i] for i in idx])
    return observed, out


def _is_number(item: object) -> bool:
    return isinstance(item, (int, float))  # bool included: a correct/incorrect flag is a 0/1 item


def item_scale(metric: str) -> str:
    """What a metric's test compares when that is not the metric's own value; "" when it is."""
    return "mean per-example log-likelihood" if metrics.item_field(metric) == "loglikelihood" else ""


def paired_bootstrap(
    metric: str,
    base: dict[str, object],
    other: dict[str, object],
    *,
    score: Score | None = metrics.value,
    n_resamples: int = 1000,
    seed: int = 1234,
) -> Significance:
    """Test other minus base on the examples both logged, matched by doc_id."""
    shared = sorted(base.keys() & other.keys())
    if not shared:
        return Significance(None, 0, "no doc_id in common")
    base_items = [base[k] for k in shared]
    other_items = [other[k] for k in shared]
    # A fresh generator per comparison keeps each p-value independent of which other rows were asked for.
    rng = np.random.default_rng(seed)
    numeric = all(_is_number(x) for x in base_items + other_items)
    if numeric and metrics.tested_on_item_mean(metric):
        diffs = np.asarray(other_items, dtype=float) - np.asarray(base_items, dtype=float)
        if not np.isfinite(diffs).all():
            return Significance(None, len(shared), f"{metric} has non-finite per-example items")
        observed = float(diffs.mean())
        p = _p_value(observed, _bootstrap_mean_diff(diffs, n_resamples, rng))
        return Significance(p, len(shared), scale=item_scale(metric))
    if metrics.tested_on_item_mean(metric):
        return Significance(None, len(shared), f"{metric} has per-example items that are not numbers")
    if metric not in metrics.METRICS:
        return Significance(None, len(shared), f"{metric} is not a metric this version of icl-eval knows")
    if not metrics.METRICS[metric].corpus:
        return Significance(None, len(shared), f"{metric} is neither a function of its items' mean nor a corpus score")
    if score is None:
        return Significance(None, len(shared), f"{metric} needs a corpus score to resample, and none was given")
    try:
        observed, resampled = _bootstrap_score(metric, base_items, other_items, score, n_resamples, rng)
    except (KeyError, ValueError, TypeError) as exc:
        return Significance(None, len(shared), f"{metric} cannot be aggregated here ({exc.__class__.__name__}: {exc})")
    return Significance(_p_value(observed, resampled), len(shared))
