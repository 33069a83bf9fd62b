"""Log-likelihood of one gold continuation: accuracy (greedy match) and perplexity (LAMBADA, arithmetic)."""

from __future__ import annotations

from typing import Any

from icl_eval import metrics
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example
from icl_eval.requests import LoglikelihoodRequest, LoglikelihoodResult, Request
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


class Loglikelihood(Kind):
    name = "loglikelihood"

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        return [LoglikelihoodRequest(prompt.context, prompt.target, key)]

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list) -> tuple[dict[str, Any], bool]:
        out: LoglikelihoodResult = results[0]
        return {"loglikelihood": out.loglikelihood, "n_tokens": out.n_tokens, "is_greedy": out.is_greedy}, out.finite

    def score(self, task: TaskConfig, queries: list[Example], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        return [None if s.nonfinite else {m: metrics.loglikelihood_item(m, r[0]) for m in task.metrics} for s, r in zip(samples, results)]


KIND = Loglikelihood()
