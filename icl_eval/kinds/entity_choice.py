"""Choosing an entity to fill a blank (GPT-3's ReCoRD): the candidates are the YAML's `choices` (the passage's
entities), each continuation is the template's `target` block rendered with `choice` set to that candidate (the
query with the entity in its blank), and the candidate with the largest log-likelihood is the model's answer.

Scored as the ReCoRD evaluation script scores an answer: exact match and token F1, each the best over the
accepted answers (the YAML's `references`), with the SQuAD normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icl_eval import metrics
from icl_eval.errors import IclEvalError
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example, check_target, eval_expression, query_input, render_block, render_zero_shot, string_list
from icl_eval.requests import LoglikelihoodRequest, Request
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


@dataclass(frozen=True)
class EntityExample(Example):
    entities: tuple[str, ...] = ()  # the candidates themselves; `choices` holds their continuations


class EntityChoice(Kind):
    name = "entity_choice"
    allows_choices = True

    def check(self, task: TaskConfig) -> None:
        self.require(task, {"choices": "entities", "references": "answers"}, "a Jinja expression giving a list")
        if task.gold:
            raise IclEvalError(f"{task.path}: 'gold' does not apply to output_type entity_choice; the accepted answers are 'references'")

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        entities = tuple(dict.fromkeys(string_list(task, "choices", eval_expression(task, "choices", doc, doc_id), doc_id)))
        answers = string_list(task, "references", eval_expression(task, "references", doc, doc_id), doc_id)
        gold = next((i for i, e in enumerate(entities) if e in answers), None)
        if gold is None:
            raise IclEvalError(f"{task.path}: doc {doc_id}: none of the answers {list(answers)[:3]!r} is among its {len(entities)} candidates ('choices: {task.choices}'); the data's answers must be entities")
        continuations = tuple(render_block(task, "target", {**doc, "choice": e}, doc_id) for e in entities)
        for text in continuations:
            check_target(task, text, doc_id)
        return EntityExample(doc_id, render_block(task, "input", doc, doc_id), continuations[gold], continuations, gold, answers,
                             render_zero_shot(task, doc, doc_id), entities=entities)

    def pairs(self, task: TaskConfig, prefix: str, query: Example, shots: int) -> list[tuple[str, str]]:
        context = prefix + query_input(query, shots)
        return [(context, task.target_delimiter + c) for c in query.choices]

    def gold_pair(self, task: TaskConfig, query: Example, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        return pairs[query.gold]

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        return [LoglikelihoodRequest(c, t, key) for c, t in prompt.pairs]

    def log(self, task: TaskConfig, prompt: Prompt, query: EntityExample, results: list) -> tuple[dict[str, Any], bool]:
        candidates = [{"entity": e, "text": t, "loglikelihood": r.loglikelihood, "n_tokens": r.n_tokens, "is_greedy": r.is_greedy}
                      for e, (_, t), r in zip(query.entities, prompt.pairs, results)]
        return {"candidates": candidates, "references": list(query.references)}, all(r.finite for r in results)

    def score(self, task: TaskConfig, queries: list[EntityExample], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        normalize = metrics.NORMALIZERS[task.normalizer]
        items: list[dict[str, Any] | None] = []
        for query, sample, res in zip(queries, samples, results):
            if sample.nonfinite:
                items.append(None)
                continue
            pick = metrics.choice_predictions(res, query.choices)["acc"]  # the largest log-likelihood
            sample.fields["prediction"] = query.entities[pick]
            items.append({m: metrics.METRICS[m].item(query.entities[pick], query.references, normalize) for m in task.metrics})
        return items

    def show(self, task: TaskConfig, prompt: Prompt, query: Example) -> list[str]:
        lines = [f"--- {len(prompt.pairs)} candidate entities, gold {query.gold} (accepted: {list(query.references)!r}) ---"]
        lines += [f"{'*' if i == query.gold else ' '} [{i}] {t!r}" for i, (_, t) in enumerate(prompt.pairs)]
        return lines


KIND = EntityChoice()
