"""A proposed answer judged true or false by whether the model gives it (GPT-3's SuperGLUE WSC, Figure G.33):
each example is one (question, proposed answer, label) row; the model completes the question greedily (one
generation, stop sequences `until`), and it judges the proposal true exactly when its completion equals the
proposal after the task's normaliser. acc: the judgement agrees with the row's label.

The rendered `target` is the proposal: what a demonstration shows as the answer, and what the completion is
compared with. Rows sharing one prompt (the same passage and pronoun at zero shots) share one generation."""

from __future__ import annotations

from typing import Any

from icl_eval import metrics
from icl_eval.errors import IclEvalError
from icl_eval.kinds.base import Prompt
from icl_eval.kinds.generate import Generate, generation_fields
from icl_eval.prompts import Example, check_target, choice_index, eval_expression, render_example, render_zero_shot
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


class JudgedCompletion(Generate):  # the same request and generation log; its own example and scoring
    name = "judged_completion"
    allows_choices = True  # `gold`: the row's label

    def check(self, task: TaskConfig) -> None:
        self.require(task, {"gold": '"1 if label else 0"'}, "a Jinja expression giving 1 when the proposed answer is right, 0 when not")
        if task.choices:
            raise IclEvalError(f"{task.path}: 'choices' does not apply to output_type judged_completion; the proposed answer is the template's target")

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        inp, tgt = render_example(task, doc, doc_id)
        check_target(task, tgt, doc_id)
        label = choice_index(task, eval_expression(task, "gold", doc, doc_id), 2, doc_id)
        return Example(doc_id, inp, tgt, gold=label, references=(tgt,), input_zero_shot=render_zero_shot(task, doc, doc_id))

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list) -> tuple[dict[str, Any], bool]:
        fields = generation_fields(task, results[0])
        judged = metrics.exact_match(fields["generation"], query.references, metrics.NORMALIZERS[task.normalizer])
        return {**fields, "proposed": query.target, "judged_true": bool(judged), "gold": query.gold}, True

    def score(self, task: TaskConfig, queries: list[Example], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        return [{m: float(int(s.fields["judged_true"]) == q.gold) for m in task.metrics} for q, s in zip(queries, samples)]


KIND = JudgedCompletion()
