"""`--shots` with the word `fewshot`: each task's own K (its fewshot_k, the GPT-3 paper's K), next to plain numbers.

The evaluator runs every prepared task at every K of its Settings, so tasks that resolve to different shot lists
run as separate groups, each with its own Settings; records and samples land in one run as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from icl_eval.errors import IclEvalError
from icl_eval.task_config import TaskConfig

FEWSHOT = "fewshot"
ShotSpec = tuple[int | str, ...]  # numbers and the word FEWSHOT, in the order given


def parse_shot_spec(value: str) -> ShotSpec:
    """`0,1,32` or `0,1,fewshot` or `fewshot`: non-negative integers and the word fewshot, duplicates dropped."""
    out: list[int | str] = []
    for part in (s.strip() for s in value.split(",")):
        if part == FEWSHOT:
            out.append(FEWSHOT)
            continue
        try:
            k = int(part)
        except ValueError:
            raise IclEvalError(f"--shots {value!r}: give non-negative integers or 'fewshot' (each task's paper K) separated by commas, e.g. --shots 0,1,32 or --shots 0,1,fewshot") from None
        if k < 0:
            raise IclEvalError(f"--shots {value!r}: shot counts must be >= 0, e.g. --shots 0,1,32")
        out.append(k)
    return tuple(dict.fromkeys(out))


def task_shots(spec: ShotSpec, task: TaskConfig) -> tuple[int, ...]:
    """The shot counts one task runs at: `fewshot` replaced by the task's fewshot_k."""
    if FEWSHOT in spec and task.fewshot_k is None:
        raise IclEvalError(f"--shots fewshot: task '{task.name}' ({task.path}) has no 'fewshot_k'; add `fewshot_k: K` to its YAML or give a number instead of fewshot")
    return tuple(dict.fromkeys(task.fewshot_k if k == FEWSHOT else k for k in spec))


def plan(spec: ShotSpec, tasks: Sequence[TaskConfig]) -> list[tuple[tuple[int, ...], list[TaskConfig]]]:
    """Tasks grouped by the shot counts they run at, in first-seen order (one group when no task differs)."""
    groups: dict[tuple[int, ...], list[TaskConfig]] = {}
    for task in tasks:
        groups.setdefault(task_shots(spec, task), []).append(task)
    return list(groups.items())


def all_shots(planned: Sequence[tuple[tuple[int, ...], list]]) -> list[int]:
    """Every K of the run, in first-seen order: results.json's settings.shots."""
    return list(dict.fromkeys(k for shots, _ in planned for k in shots))


def per_task(planned: Sequence[tuple[tuple[int, ...], list[TaskConfig]]]) -> dict[str, list[int]]:
    return {task.name: list(shots) for shots, tasks in planned for task in tasks}


def prepare(planned, settings, prepare_all: Callable) -> list[tuple[object, list]]:
    """(Settings, prepared tasks) per group: each group checked against its own largest K before the model loads."""
    out = []
    for shots, tasks in planned:
        group_settings = dataclasses.replace(settings, shots=shots)
        out.append((group_settings, prepare_all(tasks, group_settings)))
    return out


def evaluate(evaluate_fn: Callable, model, prepared, writer, result, echo) -> None:
    """Each group through the evaluator in turn; results.json is rewritten after each, holding every record so far."""
    for group_settings, preps in prepared:
        evaluate_fn(model, preps, group_settings, writer, result, echo=echo)
