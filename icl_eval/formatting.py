"""The one way a score is printed, shared by `icl-eval run`'s table and `icl-eval compare`'s tables and plots."""

from __future__ import annotations

import math


def number(x: float, signed: bool = False) -> str:
    """Four decimals for everyday scores; four significant digits beyond them, so a perplexity of 1e7 stays
    readable and a stderr of 3e-5 does not print as 0.0000. `signed` always shows the sign (a difference)."""
    sign = "+" if signed else ""
    if math.isfinite(x) and (x == 0 or 1e-3 <= abs(x) < 1e4):
        return f"{x:{sign}.4f}"
    return f"{x:{sign}.4g}"


def value_stderr(value: float, stderr: float | None) -> str:
    """'value ± stderr', or the value alone when there is no stderr (None or NaN)."""
    if stderr is None or math.isnan(stderr):
        return number(value)
    return f"{number(value)} ± {number(stderr)}"


MISSING = "—"  # a score or share of an empty set of examples


def percent_text(x: float | None, signed: bool = False) -> str:
    """A percentage (a share of examples, a relative change) to one decimal, without the % sign; MISSING when
    there is none. One decimal, not number()'s four: a share of a few thousand examples has no more to say."""
    if x is None or math.isnan(x):
        return MISSING
    return f"{x:{'+' if signed else ''}.1f}"
