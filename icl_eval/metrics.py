"""Metrics as pure functions: a per-example item, and an aggregate over items with its standard error.

An item is what the sample logs store per example; `aggregate` turns any list of them into (value, stderr),
so a subset (clean examples, a bootstrap resample) is scored exactly like the full set.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from icl_eval.requests import LoglikelihoodResult


def mean_stderr(items: Sequence[float]) -> tuple[float, float | None]:
    n = len(items)
    if n == 0:
        return float("nan"), None
    mean = sum(items) / n
    if n < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in items) / (n - 1)
    return mean, math.sqrt(var / n)


def perplexity(loglikelihoods: Sequence[float]) -> tuple[float, float | None]:
    """exp(-mean log-likelihood of the gold continuation), lm-eval's per-document definition; delta-method stderr."""
    mean_ll, se = mean_stderr(loglikelihoods)
    value = math.exp(-mean_ll)
    return value, (value * se if se is not None else None)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (the SQuAD/TriviaQA rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str], normalize: Callable[[str], str] = normalize_answer) -> float:
    pred = normalize(prediction)
    return float(any(pred == normalize(r) for r in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Best bag-of-tokens F1 against any reference, after normalisation."""
    best = 0.0
    pred = normalize_answer(prediction).split()
    for ref in references:
        gold = normalize_answer(ref).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


@dataclass(frozen=True)
class Metric:
    aggregate: Callable[[list], tuple[float, float | None]]
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {
    "acc": Metric(mean_stderr),
    "perplexity": Metric(perplexity, higher_is_better=False),
    "exact_match": Metric(mean_stderr),
    "f1": Metric(mean_stderr),
}


def aggregate(metric: str, items: list) -> tuple[float, float | None]:
    """(value, stderr) of a metric over per-example items."""
    return METRICS[metric].aggregate(items)


def loglikelihood_item(metric: str, result: LoglikelihoodResult) -> float:
    """The per-example item of a log-likelihood task: acc is greedy match of the whole continuation."""
    if metric == "acc":
        return float(result.is_greedy)
    if metric == "perplexity":
        return result.loglikelihood
    raise ValueError(f"metric '{metric}' does not apply to log-likelihood tasks")


def generation_item(metric: str, prediction: str, references: Sequence[str]):
    if metric == "exact_match":
        return exact_match(prediction, references)
    if metric == "f1":
        return token_f1(prediction, references)
    raise ValueError(f"metric '{metric}' does not apply to generation tasks")
