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
from icl_eval.requests import LoglikelihoodResult, RollingResult


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


# MultiRC's F1a: F1 of the label-1 (true) class over every answer option of the task. An item is one question's
# [true positives, false positives, false negatives], so the F1 of any subset of questions is its summed counts'.
def f1a_counts(predicted: Sequence[int], gold: Sequence[int]) -> list[int]:
    """[tp, fp, fn] of label 1 for one question's options."""
    pairs = list(zip(predicted, gold))
    return [sum(p == 1 and g == 1 for p, g in pairs), sum(p == 1 and g == 0 for p, g in pairs), sum(p == 0 and g == 1 for p, g in pairs)]


def _f1_of_counts(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0  # no positive predicted or gold: sklearn's (SuperGLUE's) 0


def f1a(items: list) -> tuple[float, float | None]:
    """F1 from summed counts; stderr by the jackknife over questions (each left out once: O(n), deterministic)."""
    if not items:
        return float("nan"), None
    counts = np.asarray(items, dtype=np.float64).reshape(-1, 3)
    tp, fp, fn = counts.sum(axis=0)
    value = _f1_of_counts(tp, fp, fn)
    n = len(counts)
    if n < 2:
        return value, None
    rest = counts.sum(axis=0) - counts  # each question left out
    denominator = 2 * rest[:, 0] + rest[:, 1] + rest[:, 2]
    leave_one_out = np.divide(2 * rest[:, 0], denominator, out=np.zeros(n), where=denominator > 0)
    return value, float(np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2)))


@dataclass(frozen=True)
class Metric:
    """Everything the harness knows about one metric; the evaluator, the kinds and compare all read it here."""

    aggregate: Callable[[list], tuple[float, float | None]]
    higher_is_better: bool = True
    output_types: tuple[str, ...] = ("loglikelihood",)
    corpus: bool = False  # items are computed for all examples at once (sacrebleu statistics)
    # The per-example item from one example's output. loglikelihood: item(LoglikelihoodResult); generate:
    # item(prediction, references, normalize); loglikelihood_rolling: item(RollingResult) -> [ll, count].
    # None where the item is not one example's own function: multiple choice scores the rule's pick against
    # the gold (choice_predictions), a corpus metric extracts its statistics for all examples at once.
    item: Callable[..., object] | None = None
    needs_uncond: bool = False  # needs the continuations scored after a neutral context too (extra requests)
    # A monotone function of the mean of its items (a mean, or perplexity = exp(-mean log-likelihood)): two runs
    # then differ significantly exactly when their mean items do, so a paired test on the items' scale is right.
    item_mean: bool = False
    item_field: str = ""  # the key of its item in a sample log's "metrics"; "" = the metric's own name


def _greedy(result: LoglikelihoodResult) -> float:
    return float(result.is_greedy)  # acc of a log-likelihood task: greedy match of the whole continuation


def _loglikelihood(result: LoglikelihoodResult) -> float:
    return result.loglikelihood


def _f1(prediction: str, references: Sequence[str], normalize: Callable[[str], str] = normalize_answer) -> float:
    return token_f1(prediction, references)  # F1 always normalises as SQuAD does


def _rolling(metric: str) -> Callable[[RollingResult], list[float]]:
    return lambda result: list(rolling.metric_items(result)[metric])  # [log-likelihood, count], as JSON stores it


def _mean(**kw) -> Metric:
    return Metric(mean_stderr, item_mean=True, **kw)


_MC = ("multiple_choice",)
_GEN = ("generate",)
_ROLLING = ("loglikelihood_rolling",)
METRICS: dict[str, Metric] = {
    "acc": _mean(output_types=("loglikelihood", "multiple_choice", "judged_completion"), item=_greedy),
    # A perplexity item is a log-likelihood, so its sample-log field says so.
    "perplexity": Metric(perplexity, higher_is_better=False, item=_loglikelihood, item_mean=True, item_field="loglikelihood"),
    "acc_norm": _mean(output_types=_MC),
    "acc_norm_token": _mean(output_types=_MC),
    "acc_uncond": _mean(output_types=_MC, needs_uncond=True),
    # entity_choice (ReCoRD) scores its picked entity against the accepted answers with the same items.
    "exact_match": _mean(output_types=(*_GEN, "entity_choice"), item=exact_match),
    "f1": _mean(output_types=(*_GEN, "entity_choice"), item=_f1),
    # binary_choice_group (MultiRC): a question is right when all its options are; F1a over all options.
    "em_question": _mean(output_types=("binary_choice_group",)),
    "f1a": Metric(f1a, output_types=("binary_choice_group",)),
    "bleu": Metric(functools.partial(corpus_score_stderr, "bleu"), output_types=_GEN, corpus=True),
    "chrf": Metric(functools.partial(corpus_score_stderr, "chrf"), output_types=_GEN, corpus=True),
    # Whole-document perplexities (rolling.py): ratios of sums over documents, so not means of their items.
    **{
        name: Metric(fn, higher_is_better=False, output_types=_ROLLING, item=_rolling(name))
        for name, fn in rolling.AGGREGATES.items()
    },
}


def lower_is_better(metric: str) -> bool:
    """The harness's own fact for its metrics; a metric it does not know (a run from another version) is taken
    at its name: perplexities are lower-is-better, anything else higher."""
    known = METRICS.get(metric)
    return not known.higher_is_better if known is not None else metric.endswith("perplexity")


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
    known = METRICS.get(metric)
    if known is None or "loglikelihood" not in known.output_types or known.item is None:
        raise ValueError(f"metric '{metric}' does not apply to log-likelihood tasks")
    return known.item(result)


def generation_item(metric: str, prediction: str, references: Sequence[str], normalizer: str = "answer"):
    known = METRICS.get(metric)
    if known is None or "generate" not in known.output_types or known.item is None:
        raise ValueError(f"metric '{metric}' does not apply to generation tasks")
    return known.item(prediction, references, NORMALIZERS[normalizer])


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
# Sample logs written before the renaming stored every item under the metric's own name.
ITEM_FIELDS: dict[str, str] = {name: m.item_field for name, m in METRICS.items() if m.item_field}


def item_field(metric: str) -> str:
    """The key of `metric`'s per-example item in a sample log's "metrics"."""
    return ITEM_FIELDS.get(metric, metric)


def field_metric(field: str) -> str:
    """The metric a sample log's "metrics" key belongs to (the inverse of `item_field`; old logs map to themselves)."""
    return _FIELD_METRICS.get(field, field)


_FIELD_METRICS = {f: m for m, f in ITEM_FIELDS.items()}


def tested_on_item_mean(metric: str) -> bool:
    """True when the metric is a monotone function of the mean of its items (Metric.item_mean)."""
    known = METRICS.get(metric)
    return known is not None and known.item_mean


# --- metrics from installed plugins (entry-point group icl_eval.metrics; docs/plugins.md) ----------------------

def _plugin_metric(obj: object) -> Metric:
    """A plugin's Metric-like object in the registry's form. Its `item` takes (prediction, references) for a
    generation task or the backend's result for a log-likelihood task; a generation item is also handed the
    task's normaliser when it accepts a third argument."""
    if isinstance(obj, Metric):
        return obj
    aggregate = getattr(obj, "aggregate", obj)
    types = tuple(getattr(obj, "output_types", ("generate",)))
    item = getattr(obj, "item", None)
    if item is not None and "generate" in types:
        plugin_item = item

        def item(prediction, references, normalize=None):  # noqa: F811 - the registry's calling convention
            return plugin_item(prediction, references)

    return Metric(
        aggregate, higher_is_better=bool(getattr(obj, "higher_is_better", True)), output_types=types,
        corpus=bool(getattr(obj, "corpus", False)), item=item, item_mean=bool(getattr(obj, "item_mean", False)),
    )


_from_plugins: list[str] = []  # names load_plugin_metrics added, so forget_plugin_metrics can take them out


def load_plugin_metrics() -> None:
    """Add installed plugins' metrics to METRICS (a plugin may not replace a built-in); plugins.refresh() forgets them."""
    from icl_eval import plugins

    for name, obj in plugins.load_group(plugins.METRICS).items():
        if name not in METRICS:
            METRICS[name] = _plugin_metric(obj)
            _from_plugins.append(name)


def forget_plugin_metrics() -> None:
    while _from_plugins:
        METRICS.pop(_from_plugins.pop(), None)
