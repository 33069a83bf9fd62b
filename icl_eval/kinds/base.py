"""What every task kind provides, and the prompt it works from.

A kind is what an output type means: which YAML keys and template blocks it needs, which backend requests one
rendered example (after its demonstrations) becomes, and how a whole task's results are scored into per-example
sample logs and metric items. The evaluator runs one generic loop over any kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icl_eval.errors import IclEvalError
from icl_eval.prompts import Example, check_target, query_input, render_example, render_zero_shot
from icl_eval.requests import Request, Result
from icl_eval.results import SampleLog
from icl_eval.task_config import TaskConfig


@dataclass(frozen=True)
class Prompt:
    """One example at K shots, as the model will see it."""

    doc_id: int
    fewshot_ids: tuple[int, ...]
    context: str
    target: str  # the gold continuation, target delimiter included
    demos_dropped: int  # demonstrations removed from the front to fit the model's context
    # (context, continuation) per candidate of a multiple-choice example; (context, target) otherwise.
    pairs: tuple[tuple[str, str], ...] = ()


class Kind:
    """Defaults shared by the kinds; each kind module overrides what its output type means."""

    name: str = ""
    blocks: tuple[str, ...] = ("input", "target")  # template blocks a task of this kind must define
    allows_choices: bool = False  # `choices` / `gold` keys (multiple choice only)
    max_shots: int | None = None  # the most demonstrations a prompt of this kind may hold (None: any)
    takes_turns: bool = True  # whether its prompts can be chat conversations (--chat-template); a whole document cannot

    def check(self, task: TaskConfig) -> None:
        """Kind-specific checks of a parsed task file (generic ones are done by task_config)."""
        for key in ("choices", "gold"):
            if getattr(task, key) and not self.allows_choices:
                raise IclEvalError(f"{task.path}: '{key}' only applies to output_type multiple_choice (this task is {task.output_type})")

    def require(self, task: TaskConfig, examples: dict[str, str], gives: str) -> None:
        """Refuse a task file that leaves out a key this kind reads: one line naming the key, what it gives and an
        example value."""
        for key, example in examples.items():
            if not getattr(task, key):
                article = "an" if self.name[:1] in "aeiou" else "a"
                raise IclEvalError(f"{task.path}: {article} {self.name} task needs '{key}' ({gives}, e.g. {key}: {example})")

    def required_blocks(self, task: TaskConfig) -> tuple[str, ...]:
        return self.blocks

    def example(self, task: TaskConfig, doc: dict, doc_id: int) -> Example:
        """One document rendered by the task's template, before any demonstrations."""
        inp, tgt = render_example(task, doc, doc_id)
        check_target(task, tgt, doc_id)  # an empty target would score the delimiter alone
        return Example(doc_id, inp, tgt, input_zero_shot=render_zero_shot(task, doc, doc_id))

    def pairs(self, task: TaskConfig, prefix: str, query: Example, shots: int) -> list[tuple[str, str]]:
        """(context, continuation) pairs of one example after the demonstrations' prefix: what must fit."""
        return [(prefix + query_input(query, shots), task.target_delimiter + query.target)]

    def gold_pair(self, task: TaskConfig, query: Example, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        return pairs[0]

    def extra_tokens(self, task: TaskConfig) -> int:
        """Tokens the backend adds after the prompt (generation), reserved when fitting it to the context."""
        return 0

    def requests(self, task: TaskConfig, key: str, prompt: Prompt, query: Example) -> list[Request]:
        raise NotImplementedError

    def log(self, task: TaskConfig, prompt: Prompt, query: Example, results: list[Result]) -> tuple[dict[str, Any], bool]:
        """The kind's fields of one example's sample log (what the model answered), and whether it is finite."""
        raise NotImplementedError

    def score(self, task: TaskConfig, queries: list[Example], results: list[list[Result]], samples: list[SampleLog]) -> list[dict[str, Any] | None]:
        """Per example, its item for each of the task's metrics (None for an example flagged non-finite).

        Whole-task, so corpus metrics (BLEU's sentence statistics) are computed in one call; a kind may add
        fields to the samples (multiple choice logs each rule's pick)."""
        raise NotImplementedError

    def show(self, task: TaskConfig, prompt: Prompt, query: Example) -> list[str]:
        """Extra lines for `icl-eval prompt` (multiple choice: every candidate)."""
        return []


def left_truncated(results: list[Result]) -> bool:
    return any(getattr(r, "left_truncated", False) for r in results)
