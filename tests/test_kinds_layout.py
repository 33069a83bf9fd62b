"""The kinds design holds: what an output type means lives in icl_eval/kinds/ only, and every built-in kind is
complete (a module each, registered, with the methods the evaluator calls)."""

from __future__ import annotations

import re
from pathlib import Path

from icl_eval.kinds import BUILTIN, Kind

PACKAGE = Path(__file__).resolve().parent.parent / "icl_eval"
# A branch on the output type: `output_type ==` / `!=`, or membership in a literal list of types. (Asking a
# metric whether it applies, `output_type in METRICS[m].output_types`, is a metric fact, not a branch.)
BRANCH = re.compile(r"output_type\s*(==|!=)|output_type\s+(not\s+)?in\s*[(\[{]")


def test_no_module_outside_kinds_branches_on_the_output_type():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) if "kinds" not in path.relative_to(PACKAGE).parts
        for n, line in enumerate(path.read_text().splitlines(), 1) if BRANCH.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_builtin_kind_is_one_module_and_overrides_what_it_must():
    for name, kind in BUILTIN.items():
        assert kind.name == name
        assert type(kind).__module__ == f"icl_eval.kinds.{name}"
        for method in ("requests", "log", "score"):
            assert getattr(type(kind), method) is not getattr(Kind, method), f"{name} does not define {method}"
