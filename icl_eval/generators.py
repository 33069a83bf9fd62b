"""Python plugins that make a task's data when no file is at hand, following the paper's definitions."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError

Doc = dict


ARITHMETIC_OPS = ("plus", "minus", "times", "three_ops")
MAX_DOCS = 1_000_000  # a generated split is held in memory; the paper's hold 2,000 to 10,000
MAX_DIGITS = 50


def _count(name: str, arg: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise IclEvalError(f"generator '{name}': generator_args.{arg} must be an integer from {low:,} to {high:,}, got {value!r}")
    return value


def arithmetic(seed: int, op: str, digits: int = 2, n: int = 2000) -> list[Doc]:
    """GPT-3 Section 3.9.1: operands uniform in [0, 10**digits); the released files' exact strings."""
    if op not in ARITHMETIC_OPS:
        raise IclEvalError(f"generator 'arithmetic': generator_args.op {op!r} is not one of {', '.join(ARITHMETIC_OPS)}")
    _count("arithmetic", "digits", digits, 1, MAX_DIGITS)
    _count("arithmetic", "n", n, 1, MAX_DOCS)
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


# GPT-3 Section 3.9.2. The separators RI inserts are those of the released file (space . / ! in equal shares).
UNSCRAMBLE_KINDS = ("cycle_letters", "anagrams1", "anagrams2", "random_insertion", "reversed")
_RI_SEPARATORS = " ./!"


def scramble(word: str, kind: str, rng: random.Random) -> str | None:
    """One word scrambled by the paper's rule; None when no order differs from the word (the released files
    never hold an unchanged word, e.g. "mirror" under A2)."""
    if kind == "reversed":
        out = word[::-1]
        return out if out != word else None
    if kind == "random_insertion":
        return "".join(ch + rng.choice(_RI_SEPARATORS) for ch in word[:-1]) + word[-1]
    if kind not in ("cycle_letters", "anagrams1", "anagrams2"):
        raise IclEvalError(f"generator 'unscramble': unknown kind '{kind}'; use one of {', '.join(UNSCRAMBLE_KINDS)}")
    if kind == "cycle_letters":
        options = [word[s:] + word[:s] for s in range(1, len(word))]
        options = [o for o in options if o != word]
        return rng.choice(options) if options else None
    keep = 1 if kind == "anagrams1" else 2
    mid = list(word[keep:-keep])
    if len(set(mid)) < 2:
        return None
    while True:  # terminates: at least two distinct letters, so some shuffle differs
        rng.shuffle(mid)
        out = word[:keep] + "".join(mid) + word[-keep:]
        if out != word:
            return out


def unscramble(
    seed: int, kind: str, wordlist: str = "wordlist/google-10000-english.txt", n: int = 10000,
    min_length: int = 6, max_length: int = 15, data_root: Path | None = None,
) -> list[Doc]:
    """The released files' strings ("\\n{scrambled} =", " {word}") from a frequency-ordered word list; word
    lengths default to those of the released files (6 to 15 letters)."""
    if kind not in UNSCRAMBLE_KINDS:
        raise IclEvalError(f"generator 'unscramble': unknown kind {kind!r}; use one of {', '.join(UNSCRAMBLE_KINDS)}")
    _count("unscramble", "n", n, 1, MAX_DOCS)
    _count("unscramble", "min_length", min_length, 1, 1000)
    _count("unscramble", "max_length", max_length, min_length, 1000)
    if not isinstance(wordlist, str):
        raise IclEvalError(f"generator 'unscramble': generator_args.wordlist must be a path, got {wordlist!r}")
    if Path(wordlist).is_absolute() or data_root is None:
        path = Path(wordlist)
    else:
        from icl_eval.data import under_root  # late: data loads this module only when a generator is needed

        path = under_root(wordlist, data_root, "generator_args.wordlist")
    try:
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    except OSError:
        raise IclEvalError(f"generator 'unscramble': word list {path} not found; pass --data-dir DIR holding {wordlist} (or the released gpt3/*.jsonl.gz files)") from None
    words = [w for w in dict.fromkeys(words) if w.isalpha() and min_length <= len(w) <= max_length]
    if not words:
        raise IclEvalError(f"{path}: no words of {min_length} to {max_length} letters; check generator_args")
    rng = random.Random(f"unscramble:{kind}:{seed}")
    rng.shuffle(words)
    docs = []
    for w in words:
        s = scramble(w, kind, rng)
        if s is not None:
            docs.append({"context": f"\n{s} =", "completion": f" {w}"})
            if len(docs) == n:
                break
    return docs


GENERATORS: dict[str, Callable[..., list[Doc]]] = {"arithmetic": arithmetic, "unscramble": unscramble}


def generate(name: str, seed: int, args: dict[str, Any], data_root: Path | None = None) -> list[Doc]:
    if name not in GENERATORS:
        raise IclEvalError(f"unknown data generator '{name}'; known: {', '.join(sorted(GENERATORS))}")
    fn = GENERATORS[name]
    extra = {"data_root": data_root} if "data_root" in inspect.signature(fn).parameters else {}
    try:
        return fn(seed, **args, **extra)
    except TypeError as e:
        raise IclEvalError(f"generator '{name}': bad generator_args ({e})") from None
