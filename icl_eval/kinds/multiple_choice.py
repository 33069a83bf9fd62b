"""Multiple choice by log-likelihood: full scoring (candidates continue one shared context: HellaSwag, PIQA, ARC)
and partial scoring (each option closes its own context and the shared rest is scored: Winogrande).

Every choice rule lives here: acc, acc_norm, acc_norm_token, and acc_uncond's extra requests (each candidate
after the task's neutral context) and its normalisation.
"""

from __future__ import annotations

from typing import Any

from icl_eval import metrics
from icl_eval.errors import IclEvalError
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example, check_target, choice_index, eval_expression, render_example, render_zero_shot, string_list
from icl_eval.requests import LoglikelihoodRequest, LoglikelihoodResult, Request
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


def _needs_uncond(task: TaskConfig) -> bool:
    return any(getattr(metrics.METRICS.get(m), "needs_uncond", False) for m in task.metrics)  # unknown names: task_config says so


class MultipleChoice(Kind):
    name = "multiple_choice"
    allows_choices = True

    def check(self, task: TaskConfig) -> None:
        self.require(task, {"choices": "endings", "gold": "label"}, "a field name or Jinja expression")
        if _needs_uncond(task) and task.scoring == "partial":
            raise IclEvalError(f"{task.path}: metric 'acc_uncond' needs scoring: full (partial scoring shares one continuation)")

    def required_blocks(self, task: TaskConfig) -> tuple[str, ...]:
        # Candidates come from the YAML's `choices`: full scoring renders only the shared input, partial only
        # the continuation every option shares.
        return ("target",) if task.scoring == "partial" else ("input",)

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        inp, tgt = render_example(task, doc, doc_id)
        choices = string_list(task, "choices", eval_expression(task, "choices", doc, doc_id), doc_id)
        gold = choice_index(task, eval_expression(task, "gold", doc, doc_id), len(choices), doc_id)
        if task.scoring == "partial":
            check_target(task, tgt, doc_id)  # the continuation every option shares
            inputs = tuple(inp + c for c in choices)
            return Example(doc_id, inputs[gold], tgt, inputs, gold)
        return Example(doc_id, inp, choices[gold], choices, gold, input_zero_shot=render_zero_shot(task, doc, doc_id))

    def pairs(self, task: TaskConfig, prefix: str, query: Example, shots: int) -> list[tuple[str, str]]:
        delim = task.target_delimiter
        if task.scoring == "partial":
            return [(prefix + c, delim + query.target) for c in query.choices]
        context = prefix + query.input  # one context string for every candidate: the backend forwards it once
        return [(context, delim + c) for c in query.choices]

    def gold_pair(self, task: TaskConfig, query: Example, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        return pairs[query.gold]

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        asked = [LoglikelihoodRequest(c, t, key) for c, t in prompt.pairs]
        if _needs_uncond(task):  # the same answer after the same neutral context is one request across the task
            asked += [LoglikelihoodRequest(task.uncond_context, t, key) for _, t in prompt.pairs]
        return asked

    def _split(self, task: TaskConfig, prompt: Prompt, results: list) -> tuple[list[LoglikelihoodResult], list[LoglikelihoodResult] | None]:
        n = len(prompt.pairs)
        return results[:n], (results[n:] if _needs_uncond(task) else None)

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list) -> tuple[dict[str, Any], bool]:
        outs, uncond = self._split(task, prompt, results)
        shared = len({c for c, _ in prompt.pairs}) == 1  # full scoring: one context for every candidate, logged once
        candidates = []
        for i, ((context, continuation), out) in enumerate(zip(prompt.pairs, outs)):
            entry: dict[str, Any] = {} if shared else {"context": context}
            entry.update(text=continuation, loglikelihood=out.loglikelihood, n_tokens=out.n_tokens, n_chars=out.n_chars, is_greedy=out.is_greedy)
            if uncond is not None:
                entry["uncond_loglikelihood"] = uncond[i].loglikelihood
            candidates.append(entry)
        finite = all(o.finite for o in outs) and all(u.finite for u in uncond or ())
        return {"candidates": candidates, "gold": query.gold}, finite

    def score(self, task: TaskConfig, queries: list[Example], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        items: list[dict[str, Any] | None] = []
        for query, sample, res in zip(queries, samples, results):
            if sample.nonfinite:
                items.append(None)
                continue
            n = len(query.choices)
            picks = metrics.choice_predictions(res[:n], query.choices, res[n:] if _needs_uncond(task) else None)
            sample.predictions = {m: picks[m] for m in task.metrics}
            items.append({m: float(picks[m] == query.gold) for m in task.metrics})
        return items

    def show(self, task: TaskConfig, prompt: Prompt, query: Example) -> list[str]:
        lines = [f"--- {len(prompt.pairs)} candidates ({task.scoring} scoring), gold {query.gold} ---"]
        for i, (context, continuation) in enumerate(prompt.pairs):
            shown = repr(continuation) if task.scoring == "full" else f"{repr(context[-80:])} -> {repr(continuation)}"
            lines.append(f"{'*' if i == query.gold else ' '} [{i}] {shown}")
        return lines


KIND = MultipleChoice()
