"""What the evaluator asks of a model and what it gets back: plain dataclasses, nothing else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikelihoodResult:
    loglikelihood: float  # sum of log-probs of the continuation's tokens
    n_tokens: int
    n_chars: int
    is_greedy: bool  # every continuation token was the argmax
    left_truncated: bool = False  # the context lost tokens from the front to fit the model
    finite: bool = True  # False when the logits held NaN or inf: the example is flagged, not scored


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    until: tuple[str, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    raw: str  # everything decoded, stop sequence included
    text: str  # cut before the first stop sequence
    n_tokens: int
    left_truncated: bool = False


@dataclass(frozen=True)
class RollingRequest:
    text: str  # a whole document, scored token by token in windows of the model's context (perplexity)


@dataclass(frozen=True)
class RollingResult:
    loglikelihood: float  # sum of log-probs of every token of the document, each scored once
    n_tokens: int
    n_words: int  # lm-eval's count, len(re.split(r"\s+", text)): the word perplexity's denominator
    n_bytes: int  # UTF-8 bytes: the denominator of byte perplexity and bits per byte
    finite: bool = True  # False when any window's logits held NaN or inf: the document is flagged, not scored
