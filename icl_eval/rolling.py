"""Rolling log-likelihood: the perplexity of whole documents (GPT-3 Section 3.1.1, e.g. Penn Treebank zero-shot).

A document longer than the model's context is cut into windows, as lm-evaluation-harness's
`loglikelihood_rolling` does: every token is scored exactly once, the first window opens with the prefix token
(BOS, else EOS) so the document's first token is predicted too, and every later window reads the full context
length, so each token sees as many earlier tokens as the window leaves room for.

The backend scores the windows (HFModel.loglikelihood_rolling, models/hf_scoring.py); this module holds the
pure parts: the windows, the counts and the corpus metrics.

The corpus metrics are ratios of sums over documents (log-likelihood over words, bytes or tokens), with a
delta-method standard error, and they are computed in log space so a terrible model gives inf, not an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from icl_eval.errors import IclEvalError
from icl_eval.requests import RollingResult

Window = tuple[list[int], list[int]]  # (context, continuation): the model reads context + continuation[:-1]

_MAX_EXP = math.log(1.7976931348623157e308)  # math.exp above this raises OverflowError


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int, stride: int | None = None) -> list[Window]:
    """The windows that score every token of `tokens` exactly once, in order.

    The first window scores the first `max_length` tokens after `prefix_token`. Each later window scores the
    next `stride` tokens (fewer at the end) and reads the `max_length` tokens before its last one, so every
    token it scores has at least `max_length - stride + 1` tokens of context. stride = max_length (the default)
    gives lm-eval's disjoint windows (its context_len=1); a smaller stride overlaps windows and buys context
    with more forward passes (lm-eval's context_len = max_length - stride + 1).

    Each window is (context, continuation) as lm-eval's make_disjoint_window leaves it: the continuation is the
    scored tokens and context + continuation[:-1] is exactly what the model reads, at most max_length tokens.
    """
    if max_length < 1:
        raise IclEvalError(f"rolling log-likelihood: the model's context length must be at least 1 token, got {max_length}")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise IclEvalError(f"rolling log-likelihood: stride {stride} must be between 1 and the model's context length ({max_length})")
    n = len(tokens)
    padded = [prefix_token, *tokens]  # padded[j] is the token just before tokens[j]
    windows: list[Window] = []
    start, end = 0, min(max_length, n)
    while start < n:
        read = padded[max(0, end - max_length) : end]
        scored = end - start
        windows.append((read[: len(read) - scored + 1], list(tokens[start:end])))
        start, end = end, min(end + stride, n)
    return windows


# --- counting ------------------------------------------------------------------------------

def count_words(text: str) -> int:
    """lm-eval's word count, len(re.split(r"\\s+", text)).

    Leading and trailing whitespace each add one (empty) word, and "" counts as one word: this is lm-eval's
    rule, kept so word perplexities compare with its numbers.
    """
    return len(re.split(r"\s+", text))


def count_words_and_line_ends(text: str) -> int:
    """Whitespace-separated words plus one per line end: the token count of Mikolov's PTB perplexities
    (the test set's 82,430 = 78,669 words + 3,761 line ends), which GPT-3's PTB number is quoted against."""
    return len(text.split()) + text.count("\n")


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


# --- corpus metrics ------------------------------------------------------------------------
# An item is one document's (log-likelihood, count); a metric's value is exp(-sum ll / sum count) or
# -sum ll / sum count / ln 2, the ratio of sums over documents (lm-eval's weighted_perplexity and
# bits_per_byte), never a mean of per-document perplexities.

Item = tuple[float, float]


def _exp(x: float) -> float:
    return math.inf if x > _MAX_EXP else math.exp(x)


def ratio_stderr(items: Sequence[Item]) -> tuple[float, float | None]:
    """R = sum a / sum b and its delta-method (linearisation) standard error over documents.

    se(R)^2 = n / (n - 1) * sum (a_i - R b_i)^2 / (sum b)^2: the ratio estimator's variance when documents
    are the sampled units. None with fewer than two documents or a non-finite R.
    """
    if not items:
        return math.nan, None
    total_b = math.fsum(b for _, b in items)
    if total_b <= 0:
        return math.nan, None
    r = math.fsum(a for a, _ in items) / total_b
    n = len(items)
    if n < 2 or not math.isfinite(r):
        return r, None
    resid = [a - r * b for a, b in items]
    sq = math.fsum(d * d for d in resid)  # x * x gives inf where x ** 2 would raise
    return r, math.sqrt(n / (n - 1) * sq) / total_b


def _perplexity(items: Sequence[Item]) -> tuple[float, float | None]:
    """exp(-R), with stderr exp(-R) * se(R) taken through logs so neither overflows."""
    r, se = ratio_stderr(items)
    value = _exp(-r)
    if se is None:
        return value, None
    return value, (_exp(-r + math.log(se)) if se > 0 else 0.0)


def word_perplexity(items: Sequence[Item]) -> tuple[float, float | None]:
    """Items: (log-likelihood, words) per document."""
    return _perplexity(items)


def byte_perplexity(items: Sequence[Item]) -> tuple[float, float | None]:
    """Items: (log-likelihood, UTF-8 bytes) per document."""
    return _perplexity(items)


def token_perplexity(items: Sequence[Item]) -> tuple[float, float | None]:
    """Items: (log-likelihood, tokens) per document; depends on the tokenizer, so compare only within one."""
    return _perplexity(items)


def bits_per_byte(items: Sequence[Item]) -> tuple[float, float | None]:
    """Items: (log-likelihood, UTF-8 bytes) per document: -R / ln 2."""
    r, se = ratio_stderr(items)
    return -r / math.log(2), (se / math.log(2) if se is not None else None)


# Metric name -> aggregate over items; lower is better for all four.
AGGREGATES: dict[str, Callable[[Sequence[Item]], tuple[float, float | None]]] = {
    "word_perplexity": word_perplexity,
    "byte_perplexity": byte_perplexity,
    "bits_per_byte": bits_per_byte,
    "token_perplexity": token_perplexity,
}


def metric_items(result: RollingResult) -> dict[str, Item]:
    """One document's item for each metric: what a sample log stores, and what the aggregates take."""
    ll = result.loglikelihood
    return {
        "word_perplexity": (ll, result.n_words),
        "byte_perplexity": (ll, result.n_bytes),
        "bits_per_byte": (ll, result.n_bytes),
        "token_perplexity": (ll, result.n_tokens),
    }


def corpus_metrics(results: Sequence[RollingResult]) -> dict[str, tuple[float, float | None]]:
    """Every metric over the documents whose scores are finite (flagged documents are left out, as elsewhere)."""
    items = [metric_items(r) for r in results if r.finite]
    return {name: fn([x[name] for x in items]) for name, fn in AGGREGATES.items()}
