"""Python plugins that make a task's data when no file is at hand, following the paper's definitions."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from icl_eval.errors import IclEvalError

Doc = dict


def arithmetic(seed: int, op: str, digits: int = 2, n: int = 2000) -> list[Doc]:
    """GPT-3 Section 3.9.1: operands uniform in [0, 10**digits); the released files' exact strings."""
    rng = random.Random(f"arithmetic:{op}:{digits}:{seed}")
    docs = []
    for _ in range(n):
        if op == "three_ops":  # 1DC: three one-digit numbers, two operations, parentheses on the first pair
            a, b, c = (rng.randrange(10) for _ in range(3))
            o1, o2 = rng.choice("+-*"), rng.choice("+-*")
            question = f"({a} {o1} {b}) {o2} {c}"
            answer = _apply(o2, _apply(o1, a, b), c)
        else:
            a, b = rng.randrange(10**digits), rng.randrange(10**digits)
            word = {"plus": "plus", "minus": "minus", "times": "times"}[op]
            question = f"{a} {word} {b}"
            answer = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        docs.append({"context": f"\n\nQ: What is {question}?\n\nA:", "completion": f" {answer}"})
    return docs


def _apply(op: str, x: int, y: int) -> int:
    return x + y if op == "+" else x - y if op == "-" else x * y


GENERATORS: dict[str, Callable[..., list[Doc]]] = {"arithmetic": arithmetic}


def generate(name: str, seed: int, args: dict[str, Any]) -> list[Doc]:
    if name not in GENERATORS:
        raise IclEvalError(f"unknown data generator '{name}'; known: {', '.join(sorted(GENERATORS))}")
    try:
        return GENERATORS[name](seed, **args)
    except TypeError as e:
        raise IclEvalError(f"generator '{name}': bad generator_args ({e})") from None
