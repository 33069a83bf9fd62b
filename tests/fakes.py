"""Fake backends for tests that exercise prompts and scoring without a neural network.

ScriptedModel answers log-likelihood requests from a function of (context, continuation) and generation
requests from a function of the context; it records every request it was asked, in order."""

from __future__ import annotations

import math
from collections.abc import Callable

from icl_eval.requests import GenerationResult, LoglikelihoodResult


class ScriptedModel:
    max_length = 10**6

    def __init__(
        self,
        score: Callable[[str, str], float] = lambda c, t: -float(len(t)),
        reply: Callable[[str], str] = lambda c: "",
        raw: Callable[[str], str] | None = None,
    ) -> None:
        self.score, self.reply = score, reply
        self.raw = raw or (lambda c: self.reply(c) + "\n")  # what was decoded, the stop sequence included
        self.ll_requests: list = []
        self.gen_requests: list = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def loglikelihood(self, requests, progress=None, on_result=None):
        self.ll_requests.extend(requests)
        out = []
        for r in requests:
            ll = self.score(r.context, r.continuation)
            out.append(LoglikelihoodResult(ll, max(1, len(r.continuation.split())), len(r.continuation), False, finite=math.isfinite(ll)))
        return out

    def generate(self, requests, progress=None, on_result=None):
        self.gen_requests.extend(requests)
        return [GenerationResult(self.raw(r.context), self.reply(r.context), 1) for r in requests]


def table_model(table: dict[tuple[str, str], float], default: float = -50.0) -> ScriptedModel:
    """Log-likelihoods looked up by (the end of the context, continuation)."""
    return ScriptedModel(score=lambda c, t: next((v for (end, cont), v in table.items() if c.endswith(end) and t == cont), default))
