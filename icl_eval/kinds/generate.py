"""Greedy generation with stop sequences, scored against accepted answers: exact match, F1, BLEU, chrF."""

from __future__ import annotations

from typing import Any

from icl_eval import metrics
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example, check_target, eval_expression, render_example, render_zero_shot, string_list
from icl_eval.requests import GenerationRequest, GenerationResult, Request
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


class Generate(Kind):
    name = "generate"

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        inp, tgt = render_example(task, doc, doc_id)
        if task.references:
            refs = string_list(task, "references", eval_expression(task, "references", doc, doc_id), doc_id)
        else:
            check_target(task, tgt, doc_id)
            refs = (tgt,)
        return Example(doc_id, inp, tgt, references=refs, input_zero_shot=render_zero_shot(task, doc, doc_id))

    def extra_tokens(self, task: TaskConfig) -> int:
        return task.max_new_tokens

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        return [GenerationRequest(prompt.context, task.until, task.max_new_tokens, key)]

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list) -> tuple[dict[str, Any], bool]:
        return {**generation_fields(task, results[0]), "references": list(query.references)}, True

    def score(self, task: TaskConfig, queries: list[Example], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        predictions = [s.fields["generation"] for s in samples]
        references = [s.fields["references"] for s in samples]
        # Whole-task: a corpus metric's sentence statistics are extracted in one call.
        per_metric = {m: metrics.generation_items(m, predictions, references, task.normalizer) for m in task.metrics}
        return [{m: per_metric[m][i] for m in task.metrics} for i in range(len(samples))]


def generation_fields(task: TaskConfig, out: GenerationResult) -> dict[str, Any]:
    """What a generation example logs of its request and answer: the stripped text is what is scored."""
    return {"until": list(task.until), "max_new_tokens": task.max_new_tokens, "generation_raw": out.raw, "generation": out.text.strip()}


KIND = Generate()
