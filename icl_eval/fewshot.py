"""Drawing demonstrations: K per example, seeded by (task, seed, doc id) so they never depend on order or --limit."""

from __future__ import annotations

import hashlib
import random

from icl_eval.errors import IclEvalError


def stable_rng(*parts: object) -> random.Random:
    """A generator seeded from the parts' text, identical across processes and Python versions."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw(task: str, seed: int, doc_id: int, k: int, pool_size: int, same_split: bool) -> list[int]:
    """Indices into the few-shot pool, drawn per example. With same_split, the pool is the eval split: never the example itself."""
    return _pick(stable_rng(task, seed, doc_id), task, doc_id, k, pool_size, same_split)


FEWSHOT_MODES = ("per_example", "fixed")


def draw_fixed(task: str, seed: int, doc_id: int, k: int, pool_size: int, same_split: bool) -> list[int]:
    """One demonstration set per (task, seed, K), the same for every example: its prompts share a token prefix.

    With same_split, an example that is itself in the set must not see its own answer: its slot is taken by
    a seeded spare (the set's K+1-th draw), the other demonstrations keep their order, so only the
    demonstrations from that slot onwards differ for that one example.
    """
    return _pick(stable_rng(task, seed, "fixed", k), task, doc_id, k, pool_size, same_split)


def _pick(rng: random.Random, task: str, doc_id: int, k: int, pool_size: int, same_split: bool) -> list[int]:
    available = pool_size - (1 if same_split else 0)
    if k > available:
        raise IclEvalError(f"task '{task}': --shots {k} is larger than the few-shot pool ({available} examples); use at most {available} shots")
    if k == 0:
        return []
    # Drawing one extra keeps the draw the same size whether or not the example is in it.
    picked = rng.sample(range(pool_size), min(k + 1, pool_size) if same_split else k)
    if same_split:
        picked = [i for i in picked if i != doc_id][:k]
    return picked


def subset(task: str, seed: int, n_docs: int, limit: int | None) -> list[int]:
    """The documents evaluated: all, or a seeded random subset of `limit` (sorted, so logs read in order)."""
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    return sorted(stable_rng(task, seed, "limit").sample(range(n_docs), limit))
