"""Grouping requests into batches: longest first, under a token budget, split in half on out-of-memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(lengths: Sequence[int], max_rows: int | None, token_budget: int | None) -> list[list[int]]:
    """Index batches over `lengths`, longest first: a batch's padded size (rows x its longest row) stays in budget.

    Longest first so that an out-of-memory shows up on the first batch, not hours in.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        too_many = max_rows is not None and len(current) >= max_rows
        too_big = token_budget is not None and current and (len(current) + 1) * longest > token_budget
        if current and (too_many or too_big):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def run_splitting_on_oom(
    batch: list[T], run: Callable[[list[T]], list[R]], on_split: Callable[[], None] = lambda: None
) -> Iterator[tuple[list[T], list[R]]]:
    """Run a batch, yielding (items, results); on out-of-memory run its halves instead, keeping work done."""
    try:
        yield batch, run(batch)
    except Exception as e:
        if not is_out_of_memory(e) or len(batch) == 1:
            raise
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        on_split()
        mid = len(batch) // 2
        yield from run_splitting_on_oom(batch[:mid], run, on_split)
        yield from run_splitting_on_oom(batch[mid:], run, on_split)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def group_shared_prefixes(rows: Sequence[Sequence[int]], min_shared: int) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Groups of rows that start with the same tokens, as (shared length, indices), and the rows left alone.

    `rows` holds each row's shareable tokens (those before its first scored position). Rows are sorted so
    that equal prefixes sit together, and a group is a run of neighbours whose common prefix stays at least
    `min_shared` tokens long, or whose shareable tokens are all identical (the candidates of one question,
    however short their context). A chance match of a few tokens is not worth a separate forward pass.
    Callers group again inside each group, so fixed demonstrations are shared across questions and each
    question's own context across its candidates.
    """
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i]))
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    shared, members = 0, []
    for i in order + [None]:
        if i is not None and members:
            joined = min(shared, common_prefix_length(rows[members[-1]], rows[i]))
            identical = joined == shared == len(rows[i]) == len(rows[members[-1]])
            if joined >= min_shared or (identical and joined > 0):
                shared = joined
                members.append(i)
                continue
        if len(members) > 1:
            groups.append((shared, members))
        else:
            alone.extend(members)
        if i is not None:
            shared, members = len(rows[i]), [i]
    return groups, alone
