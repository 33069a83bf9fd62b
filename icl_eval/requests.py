"""The backend contract: what a task kind asks of a model, what it gets back, and the protocol a backend meets.

Requests and results are plain frozen dataclasses. Every request names the task it belongs to (`task`, the
task's config and template hash), so a response cache keys on the request alone: a backend call never depends
on state left by an earlier one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str
    task: str = ""  # the task's key (config and template hash): part of the response cache's key


@dataclass(frozen=True)
class LoglikelihoodResult:
    loglikelihood: float  # sum of log-probs of the continuation's tokens
    n_tokens: int
    n_chars: int
    is_greedy: bool  # every continuation token was the argmax
    left_truncated: bool = False  # the context lost tokens from the front to fit the model
    finite: bool = True  # False when the logits held NaN or inf: the example is flagged, not scored
    cached: bool = False  # read back from the response cache rather than computed in this run


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    until: tuple[str, ...]
    max_new_tokens: int
    task: str = ""


@dataclass(frozen=True)
class GenerationResult:
    raw: str  # everything decoded, stop sequence included
    text: str  # cut before the first stop sequence
    n_tokens: int
    left_truncated: bool = False
    cached: bool = False


@dataclass(frozen=True)
class RollingRequest:
    text: str  # a whole document, scored token by token in windows of the model's context (perplexity)
    stride: int | None = None  # tokens scored per window after the first; None: the model's context (no overlap)
    task: str = ""


@dataclass(frozen=True)
class RollingResult:
    loglikelihood: float  # sum of log-probs of every token of the document, each scored once
    n_tokens: int
    n_words: int  # lm-eval's count, len(re.split(r"\s+", text)): the word perplexity's denominator
    n_bytes: int  # UTF-8 bytes: the denominator of byte perplexity and bits per byte
    finite: bool = True  # False when any window's logits held NaN or inf: the document is flagged, not scored
    cached: bool = False


Request = Union[LoglikelihoodRequest, GenerationRequest, RollingRequest]
Result = Union[LoglikelihoodResult, GenerationResult, RollingResult]
# (requests finished, tokens forwarded) since the last call: progress bars and the cache's commit points.
Progress = Callable[[int, int], None]
# (request index, result) as each result is computed, so a cache can store it before the call returns.
OnResult = Callable[[int, Any], None]


class Model(Protocol):
    """What every backend offers (the HF model, and the wrappers: response cache, data parallel).

    Each method takes a whole task's requests of its type at once, in any order, and returns one result per
    request in the same order; it calls `progress` at its batch boundaries and `on_result` per result."""

    max_length: int  # the context window in tokens: prompts are fitted to it

    def count_tokens(self, text: str) -> int: ...

    def describe(self) -> dict[str, Any]: ...  # the results' model block: name, path, parameters, dtype, fingerprint...

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[LoglikelihoodResult]: ...

    def generate(self, requests: Sequence[GenerationRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[GenerationResult]: ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[RollingResult]: ...


# The Model method that serves each request type: the one place a request's type decides where it goes.
METHODS: dict[type, str] = {LoglikelihoodRequest: "loglikelihood", GenerationRequest: "generate", RollingRequest: "loglikelihood_rolling"}


def call_model(model: Model, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
    """Every request answered, in order: one backend call per request type present, identical requests asked once."""
    unique: dict[Request, int] = {}
    first = [unique.setdefault(r, len(unique)) for r in requests]
    distinct = list(unique)
    answers: list[Any] = [None] * len(distinct)
    for kind, method in METHODS.items():
        indices = [i for i, r in enumerate(distinct) if type(r) is kind]
        if indices:
            for i, out in zip(indices, getattr(model, method)([distinct[i] for i in indices], progress)):
                answers[i] = out
    unknown = [r for r in distinct if type(r) not in METHODS]
    if unknown:
        raise TypeError(f"no backend method serves {type(unknown[0]).__name__}")
    return [answers[i] for i in first]
