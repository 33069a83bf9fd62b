"""`--shots` with the word `fewshot`: each task's own K (its fewshot_k, the GPT-3 paper's K), next to plain numbers.

Each prepared task carries its own shot counts (evaluator.PreparedTask.shots), so tasks whose `fewshot` differs
run in one evaluation.
"""

from __future__ import annotations


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
