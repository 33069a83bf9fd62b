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
