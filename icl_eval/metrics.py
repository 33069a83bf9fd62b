"""Metrics as pure functions: a per-example item, and an aggregate over items with its standard error.

An item is what the sample logs store per example; `aggregate` turns any list of them into (value, stderr),
so a subset (clean examples, a bootstrap resample) is scored exactly like the full set.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from icl_eval import rolling
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
    """exp(-mean log-likelihood of the gold continuation), lm-eval's per-document definition; delta-method stderr.

    Computed in log space: a document-level mean log-likelihood below about -709 makes the perplexity exceed the
    largest float, and it is then reported as inf (json writes Infinity) instead of raising OverflowError after
    all the compute. The stderr, perplexity * stderr(mean ll), is exp(log perplexity + log stderr), so it stays
    finite whenever it fits, even when the perplexity itself does not."""
    mean_ll, se = mean_stderr(loglikelihoods)
    if math.isnan(mean_ll):
        return float("nan"), None
    value = _exp(-mean_ll)
    if se is None:
        return value, None
    return value, (0.0 if se == 0 else _exp(-mean_ll + math.log(se)))


def _exp(x: float) -> float:
    """math.exp saturating to inf instead of raising OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (the SQuAD/TriviaQA rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "answer": normalize_answer,
    "strip": str.strip,
    "lower": lambda text: text.strip().lower(),
}


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


# Corpus BLEU and chrF: an item is one sentence's sufficient statistics (n-gram matches and totals, JSON ints),
# and the score of any subset is computed from the summed statistics, exactly as sacrebleu's corpus score.
BOOTSTRAP_RESAMPLES = 1000


@functools.lru_cache(maxsize=None)
def sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if name == "bleu" else CHRF()


def sacrebleu_signature(name: str, num_refs: int = 1) -> str:
    """sacrebleu's reproducibility signature (tokeniser, smoothing, version...); it needs the reference count."""
    from sacrebleu.metrics import BLEU, CHRF

    metric = BLEU() if name == "bleu" else CHRF()
    metric.num_refs = num_refs
    return str(metric.get_signature())


def sentence_statistics(name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[int]]:
    """Per-sentence statistics; every sentence needs the same number of references (sacrebleu's streams)."""
    n_refs = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else r[0] for r in references] for i in range(n_refs)]
    stats = sacrebleu_metric(name)._extract_corpus_statistics(list(predictions), streams)
    return [[int(x) for x in row] for row in stats]


def _corpus_score(name: str, summed: Sequence[float]) -> float:
    return float(sacrebleu_metric(name)._compute_score_from_stats([int(x) for x in summed]).score)


def corpus_score_stderr(name: str, items: list) -> tuple[float, float | None]:
    """The corpus score from summed statistics, and a bootstrap stderr that resamples sentences' statistics
    (a multinomial count per sentence and one matrix product: no re-tokenising of text)."""
    if not items:
        return float("nan"), None
    stats = np.asarray(items, dtype=np.int64)
    value = _corpus_score(name, stats.sum(axis=0))
    n = len(stats)
    if n < 2:
        return value, None
    rng = np.random.default_rng(0)  # fixed: the stderr of one set of items must not change between calls
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES)
    resampled = [_corpus_score(name, row) for row in counts @ stats]
    return value, float(np.std(resampled, ddof=1))


@dataclass(frozen=True)
class Metric:
    aggregate: Callable[[list], tuple[float, float | None]]
    higher_is_better: bool = True
    output_types: tuple[str, ...] = ("loglikelihood",)
    corpus: bool = False  # items are computed for all examples at once (sacrebleu statistics)
    needs_uncond: bool = False  # scored against each candidate after the neutral context too (extra requests)


_MC = ("multiple_choice",)
_GEN = ("generate",)
METRICS: dict[str, Metric] = {
    "acc": Metric(mean_stderr, output_types=("loglikelihood", "multiple_choice")),
    "perplexity": Metric(perplexity, higher_is_better=False),
    "acc_norm": Metric(mean_stderr, output_types=_MC),
    "acc_norm_token": Metric(mean_stderr, output_types=_MC),
    "acc_uncond": Metric(mean_stderr, output_types=_MC, needs_uncond=True),
    "exact_match": Metric(mean_stderr, output_types=_GEN),
    "f1": Metric(mean_stderr, output_types=_GEN),
    "bleu": Metric(functools.partial(corpus_score_stderr, "bleu"), output_types=_GEN, corpus=True),
    "chrf": Metric(functools.partial(corpus_score_stderr, "chrf"), output_types=_GEN, corpus=True),
}
METRICS.update({name: Metric(fn, higher_is_better=False, output_types=("loglikelihood_rolling",)) for name, fn in rolling.AGGREGATES.items()})


def aggregate(metric: str, items: list) -> tuple[float, float | None]:
    """(value, stderr) of a metric over per-example items."""
    return METRICS[metric].aggregate(items)


def value(metric: str, items: list) -> float:
    """The metric alone, without its stderr: for resampling loops (a corpus metric's stderr is itself a bootstrap)."""
    if METRICS[metric].corpus:
        return _corpus_score(metric, np.asarray(items, dtype=np.int64).sum(axis=0)) if items else float("nan")
    return aggregate(metric, items)[0]


def loglikelihood_item(metric: str, result: LoglikelihoodResult) -> float:
    """The per-example item of a log-likelihood task: acc is greedy match of the whole continuation."""
    if metric == "acc":
        return float(result.is_greedy)
    if metric == "perplexity":
        return result.loglikelihood
    raise ValueError(f"metric '{metric}' does not apply to log-likelihood tasks")


def generation_item(metric: str, prediction: str, references: Sequence[str], normalizer: str = "answer"):
    if metric == "exact_match":
        return exact_match(prediction, references, NORMALIZERS[normalizer])
    if metric == "f1":
        return token_f1(prediction, references)
    raise ValueError(f"metric '{metric}' does not apply to generation tasks")


def generation_items(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]], normalizer: str = "answer") -> list:
    """Per-example items for a whole task at once (corpus metrics extract their statistics in one call)."""
    if METRICS[metric].corpus:
        return sentence_statistics(metric, predictions, references)
    return [generation_item(metric, p, r, normalizer) for p, r in zip(predictions, references)]


# Multiple choice: which candidate each rule picks. Ties go to the first candidate.
def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def choice_predictions(
    results: Sequence[LoglikelihoodResult], choices: Sequence[str], uncond: Sequence[LoglikelihoodResult] | None = None
) -> dict[str, int]:
    """The candidate each multiple-choice rule picks (docs/tasks.md has the table).

    acc: largest log-likelihood. acc_norm: largest log-likelihood per character of the choice text, without the
    target delimiter: lm-evaluation-harness's definition (`ll / len(choice)` over its `doc_to_choice`), so for
    partial scoring (Winogrande) it divides the shared continuation's log-likelihood by the length of each option's
    context, as lm-eval's Winogrande choices are. acc_norm_token: largest log-likelihood per scored token (the GPT-3
    paper's normalisation). acc_uncond: largest log P(continuation | context) - log P(continuation | neutral context).
    An empty choice or continuation counts as length 1, so nothing divides by zero."""
    if len(choices) != len(results):
        raise ValueError(f"{len(results)} candidate results for {len(choices)} choices")
    lls = [r.loglikelihood for r in results]
    preds = {
        "acc": _argmax(lls),
        "acc_norm": _argmax([ll / max(len(c), 1) for ll, c in zip(lls, choices)]),
        "acc_norm_token": _argmax([r.loglikelihood / max(r.n_tokens, 1) for r in results]),
    }
    if uncond is not None:
        preds["acc_uncond"] = _argmax([r.loglikelihood - u.loglikelihood for r, u in zip(results, uncond)])
    return preds


# How each metric's per-example item is named in the sample logs (sample["metrics"]), and how two runs' items
# are compared. The writer (evaluator) and every reader (compare, contamination rescoring) go through these.
# A perplexity item is a log-likelihood, so its field says so; other items are named after their metric.
# Sample logs written before this mapping stored every item under the metric's own name.
ITEM_FIELDS: dict[str, str] = {"perplexity": "loglikelihood"}


def item_field(metric: str) -> str:
    """The key of `metric`'s per-example item in a sample log's "metrics"."""
    return ITEM_FIELDS.get(metric, metric)


def field_metric(field: str) -> str:
    """The metric a sample log's "metrics" key belongs to (the inverse of `item_field`; old logs map to themselves)."""
    return _FIELD_METRICS.get(field, field)


_FIELD_METRICS = {f: m for m, f in ITEM_FIELDS.items()}


def tested_on_item_mean(metric: str) -> bool:
    """True when the metric is a monotone function of the mean of its items (a mean, or perplexity = exp(-mean
    log-likelihood)): two runs then differ significantly exactly when their mean items do, so a paired test on the
    items' scale is the right one (testing perplexity itself, exponentiated, is swamped by its skew)."""
    known = METRICS.get(metric)
    return known is not None and known.aggregate in (mean_stderr, perplexity)
