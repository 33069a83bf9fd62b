"""Task kinds, one module each: what an output type means (YAML checks, requests, scoring).

`KINDS` maps a task file's `output_type` to its kind; outside this package no module tests output_type.
Installed plugins add kinds through the `icl_eval.kinds` entry-point group.
"""

from __future__ import annotations

import functools

from icl_eval.errors import IclEvalError
from icl_eval.kinds import (
    binary_choice_group, entity_choice, generate, judged_completion, loglikelihood, loglikelihood_rolling, multiple_choice,
)
from icl_eval.kinds.base import Kind, Prompt

BUILTIN: dict[str, Kind] = {k.name: k for k in (
    loglikelihood.KIND, multiple_choice.KIND, generate.KIND, loglikelihood_rolling.KIND,
    binary_choice_group.KIND, entity_choice.KIND, judged_completion.KIND,
)}


@functools.lru_cache(maxsize=None)
def kinds() -> dict[str, Kind]:
    """Built-in kinds, then plugins' (a plugin may not replace a built-in)."""
    from icl_eval import plugins

    found = dict(BUILTIN)
    for name, kind in plugins.load_group(plugins.KINDS).items():
        found.setdefault(name, kind() if isinstance(kind, type) else kind)
    return found


def kind_of(output_type: str, where: str = "") -> Kind:
    try:
        return kinds()[output_type]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(output_type, sorted(kinds()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise IclEvalError(f"{where}: 'output_type' must be one of {', '.join(kinds())}, got {output_type!r}{hint}") from None


def render(task, doc: dict, doc_id: int):
    """One document as its task's kind renders it (an Example), before any demonstrations."""
    return kind_of(task.output_type, task.path).example(task, doc, doc_id)


__all__ = ["BUILTIN", "Kind", "Prompt", "kind_of", "kinds", "render"]
