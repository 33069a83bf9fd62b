"""A group of true/false judgements sharing one context (GPT-3's MultiRC): an example is one question, its items
are the answer options, and each option is a 2-way choice between its two candidate continuations, the
template's `target` block rendered with `option` (the item) and `label` (0 or 1).

Every option is scored on its own after the question (the model never sees the other options of the question
it answers); a demonstration shows its whole question with every option labelled, one line each, so K counts
questions as the paper's does. Scored per question: em_question (every option right) and f1a (F1 of label 1
over all options of the task, from per-question counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icl_eval import metrics
from icl_eval.errors import IclEvalError
from icl_eval.kinds.base import Kind, Prompt
from icl_eval.prompts import Example, check_target, choice_index, eval_expression, query_input, render_block, render_zero_shot, string_list
from icl_eval.requests import LoglikelihoodRequest, Request
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig

LINE_JOIN = "\n"  # between the labelled options of a demonstration


@dataclass(frozen=True)
class GroupExample(Example):
    options: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()  # the gold label of each option
    candidates: tuple[tuple[str, str], ...] = ()  # per option, its continuation for label 0 and for label 1


class BinaryChoiceGroup(Kind):
    name = "binary_choice_group"
    allows_choices = True

    def check(self, task: TaskConfig) -> None:
        self.require(task, {"choices": "answers", "gold": "labels"}, "a Jinja expression giving one value per option")

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        options = string_list(task, "choices", eval_expression(task, "choices", doc, doc_id), doc_id)
        gold = eval_expression(task, "gold", doc, doc_id)
        if not isinstance(gold, (list, tuple)) or len(gold) != len(options):
            raise IclEvalError(f"{task.path}: 'gold: {task.gold}' must give a list of {len(options)} labels (0 or 1), one per option, got {gold!r} for doc {doc_id}")
        labels = tuple(choice_index(task, g, 2, doc_id) for g in gold)
        candidates = []
        for option in options:
            pair = tuple(render_block(task, "target", {**doc, "option": option, "label": label}, doc_id) for label in (0, 1))
            for text in pair:
                check_target(task, text, doc_id)
            candidates.append(pair)
        target = LINE_JOIN.join(pair[label] for pair, label in zip(candidates, labels))
        return GroupExample(doc_id, render_block(task, "input", doc, doc_id), target, input_zero_shot=render_zero_shot(task, doc, doc_id),
                            options=options, labels=labels, candidates=tuple(candidates))

    def pairs(self, task: TaskConfig, prefix: str, query: GroupExample, shots: int) -> list[tuple[str, str]]:
        context = prefix + query_input(query, shots)  # one context for every option: the backend forwards it once
        return [(context, task.target_delimiter + text) for pair in query.candidates for text in pair]

    def gold_pair(self, task: TaskConfig, query: GroupExample, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        return pairs[0][0], task.target_delimiter + query.target  # every option's gold line: what a demonstration shows

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        return [LoglikelihoodRequest(c, t, key) for c, t in prompt.pairs]

    def log(self, task: TaskConfig, prompt: Prompt, query: GroupExample, results: list) -> tuple[dict[str, Any], bool]:
        options = []
        for i, option in enumerate(query.options):
            cands = [{"text": prompt.pairs[2 * i + j][1], "loglikelihood": r.loglikelihood, "n_tokens": r.n_tokens, "is_greedy": r.is_greedy}
                     for j, r in enumerate(results[2 * i: 2 * i + 2])]
            options.append({"option": option, "gold": query.labels[i], "candidates": cands})
        return {"options": options}, all(r.finite for r in results)

    def score(self, task: TaskConfig, queries: list[GroupExample], results: list[list], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        items: list[dict[str, Any] | None] = []
        for query, sample, res in zip(queries, samples, results):
            if sample.nonfinite:
                items.append(None)
                continue
            # Each option's label by the larger log-likelihood (the acc rule; the two lines differ in one word).
            picks = [metrics.choice_predictions(res[2 * i: 2 * i + 2], pair)["acc"] for i, pair in enumerate(query.candidates)]
            for option, pick in zip(sample.fields["options"], picks):
                option["pick"] = pick
            per = {"em_question": float(picks == list(query.labels)), "f1a": metrics.f1a_counts(picks, query.labels)}
            items.append({m: per[m] for m in task.metrics})
        return items

    def show(self, task: TaskConfig, prompt: Prompt, query: GroupExample) -> list[str]:
        lines = [f"--- {len(query.options)} options, each a 2-way choice (gold marked *) ---"]
        for i, label in enumerate(query.labels):
            for j in (0, 1):
                lines.append(f"{'*' if j == label else ' '} [{i}.{j}] {prompt.pairs[2 * i + j][1]!r}")
        return lines


KIND = BinaryChoiceGroup()
