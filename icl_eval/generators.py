"""Python plugins that make a task's data when no file is at hand, following the paper's definitions."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from pathlib import Path
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


# GPT-3 Section 3.9.2. The separators RI inserts are those of the released file (space . / ! in equal shares).
UNSCRAMBLE_KINDS = ("cycle_letters", "anagrams1", "anagrams2", "random_insertion", "reversed")
_RI_SEPARATORS = " ./!"


def scramble(word: str, kind: str, rng: random.Random) -> str:
    """One word scrambled by the paper's rule; never the word itself (the released files never are)."""
    if kind == "reversed":
        return word[::-1]
    if kind == "random_insertion":
        return "".join(ch + rng.choice(_RI_SEPARATORS) for ch in word[:-1]) + word[-1]
    for _ in range(100):
        if kind == "cycle_letters":
            shift = rng.randrange(1, len(word))
            out = word[shift:] + word[:shift]
        elif kind in ("anagrams1", "anagrams2"):
            keep = 1 if kind == "anagrams1" else 2
            mid = list(word[keep:-keep])
            rng.shuffle(mid)
            out = word[:keep] + "".join(mid) + word[-keep:]
        else:
            raise IclEvalError(f"generator 'unscramble': unknown kind '{kind}'; use one of {', '.join(UNSCRAMBLE_KINDS)}")
        if out != word:
            return out
    return out  # a word whose letters allow no other order (e.g. "aaaaaa") stays as it is


def unscramble(
    seed: int, kind: str, wordlist: str = "wordlist/google-10000-english.txt", n: int = 10000,
    min_length: int = 6, max_length: int = 15, data_root: Path | None = None,
) -> list[Doc]:
    """The released files' strings ("\\n{scrambled} =", " {word}") from a frequency-ordered word list; word
    lengths default to those of the released files (6 to 15 letters)."""
    path = Path(wordlist) if Path(wordlist).is_absolute() or data_root is None else data_root / wordlist
    try:
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    except OSError:
        raise IclEvalError(f"generator 'unscramble': word list {path} not found; pass --data-dir DIR holding {wordlist} (or the released gpt3/*.jsonl.gz files)") from None
    words = [w for w in dict.fromkeys(words) if w.isalpha() and min_length <= len(w) <= max_length]
    if not words:
        raise IclEvalError(f"{path}: no words of {min_length} to {max_length} letters; check generator_args")
    rng = random.Random(f"unscramble:{kind}:{seed}")
    chosen = [words[i] for i in rng.sample(range(len(words)), min(n, len(words)))]
    return [{"context": f"\n{scramble(w, kind, rng)} =", "completion": f" {w}"} for w in chosen]


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
