"""Drawing demonstrations: K per example, seeded by (task, seed, doc id) so they never depend on order or --limit."""

from __future__ import annotations

import hashlib
import random

from icl_eval.errors import IclEvalError


def stable_rng(*parts: object) -> random.Random:
    """A generator seeded from the parts' text, identical across processes and Python versions."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw(task: str, seed: int, doc_id: int, k: int, pool_size: int, same_split: bool, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Indices into the few-shot pool, drawn per example. With same_split, the pool is the eval split: never the
    example itself, nor the pool documents in `exclude` (those sharing its story, whose turns would give it away)."""
    return _pick(stable_rng(task, seed, doc_id), task, doc_id, k, pool_size, same_split, exclude)


FEWSHOT_MODES = ("per_example", "fixed")


def draw_fixed(task: str, seed: int, doc_id: int, k: int, pool_size: int, same_split: bool, exclude: frozenset[int] = frozenset()) -> list[int]:
    """One demonstration set per (task, seed, K), the same for every example: its prompts share a token prefix.

    With same_split, an example that is itself in the set must not see its own answer: its slot is taken by
    a seeded spare (the set's K+1-th draw), the other demonstrations keep their order, so only the
    demonstrations from that slot onwards differ for that one example.
    """
    return _pick(stable_rng(task, seed, "fixed", k), task, doc_id, k, pool_size, same_split, exclude)


def _pick(rng: random.Random, task: str, doc_id: int, k: int, pool_size: int, same_split: bool, exclude: frozenset[int] = frozenset()) -> list[int]:
    banned = (exclude | {doc_id}) if same_split else frozenset()
    available = pool_size - len(banned)
    if k > available:
        raise IclEvalError(f"task '{task}': --shots {k} is larger than the few-shot pool ({available} examples); use at most {available} shots")
    if k == 0:
        return []
    # Drawing as many extra as could be banned keeps the draw the same whether or not they are in it.
    picked = rng.sample(range(pool_size), min(k + len(banned), pool_size))
    return [i for i in picked if i not in banned][:k]


def subset(task: str, seed: int, n_docs: int, limit: int | None) -> list[int]:
    """The documents evaluated: all, or a seeded random subset of `limit` (sorted, so logs read in order)."""
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    return sorted(stable_rng(task, seed, "limit").sample(range(n_docs), limit))
