"""Perplexity of whole documents (GPT-3 Section 3.1.1, Penn Treebank zero-shot): every token of the rendered
`input` block scored once, in rolling windows of the model's context (the backend's loglikelihood_rolling),
aggregated over the corpus as sums of log-likelihood over sums of words, bytes or tokens."""

from __future__ import annotations

from typing import Any

from icl_eval import rolling
from icl_eval.errors import IclEvalError
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example, render_block
from icl_eval.requests import Request, RollingRequest, RollingResult
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig

WORD_COUNTS = {"lm_eval": rolling.count_words, "words_and_line_ends": rolling.count_words_and_line_ends}


class LoglikelihoodRolling(Kind):
    name = "loglikelihood_rolling"
    blocks = ("input",)
    max_shots = 0  # a document's perplexity has no demonstrations
    takes_turns = False  # a document's tokens are all scored: there is no question and answer to split into turns

    def check(self, task: TaskConfig) -> None:
        super().check(task)
        if task.word_count not in WORD_COUNTS:
            raise IclEvalError(f"{task.path}: 'word_count' must be one of {', '.join(WORD_COUNTS)}, got {task.word_count!r}")
        if task.rolling_stride is not None and task.rolling_stride < 1:
            raise IclEvalError(f"{task.path}: 'rolling_stride' must be a positive number of tokens, got {task.rolling_stride}")

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        return Example(doc_id, render_block(task, "input", doc, doc_id), "")  # the document itself; no target

    def pairs(self, task: TaskConfig, prefix: str, query: Example, shots: int) -> list[tuple[str, str]]:
        return [(prefix + query.input, "")]  # windows fit any length: nothing is ever dropped or truncated

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        return [RollingRequest(prompt.context, task.rolling_stride, key)]

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list) -> tuple[dict[str, Any], bool]:
        out: RollingResult = results[0]
        words = WORD_COUNTS[task.word_count](prompt.context)
        return {"loglikelihood": out.loglikelihood, "n_tokens": out.n_tokens, "n_words": words, "n_bytes": out.n_bytes}, out.finite

    def score(self, task: TaskConfig, queries: list[Example], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        counts = {"word_perplexity": "n_words", "byte_perplexity": "n_bytes", "bits_per_byte": "n_bytes", "token_perplexity": "n_tokens"}
        return [None if s.nonfinite else {m: [s.fields["loglikelihood"], s.fields[counts[m]]] for m in task.metrics} for s in samples]


KIND = LoglikelihoodRolling()
