"""Grouping requests into batches: longest first, under a token budget that out-of-memory errors halve."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class BatchBudget:
    """How much one forward pass may hold: at most `max_rows` rows and `tokens` padded tokens (None: no cap).

    The one out-of-memory strategy of the backend, for scoring and generation alike: an OOM halves the budget
    (`shrink_after_oom`) and the failed rows run again in smaller batches, work already finished is kept. The
    halving lasts for the rest of the call only: the backend calls `reset` as each call (a task) starts, so one
    task's oversized batch does not slow down every task after it.
    """

    max_rows: int | None
    tokens: int | None
    floor: int  # tokens never shrink below one full-context row: the longest request must still fit
    _configured: tuple[int | None, int | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._configured = (self.max_rows, self.tokens)

    def reset(self) -> None:
        self.max_rows, self.tokens = self._configured

    def rows_for(self, longest: int) -> int:
        """Rows of up to `longest` tokens that fit at once."""
        rows = self.max_rows or 1 << 30
        if self.tokens is not None:
            rows = min(rows, max(1, self.tokens // longest))
        return rows

    def shrink_after_oom(self, error: BaseException, rows: int) -> None:
        """Halve the budget after `error` hit a batch of `rows` rows; re-raise anything else, or an OOM of one row
        (nothing smaller to try)."""
        if not is_out_of_memory(error) or rows <= 1:
            raise error
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.tokens is not None:
            # never below one full-context row, nor up to it from a smaller measured budget (a CPU's)
            self.tokens = max(min(self.floor, self.tokens), self.tokens // 2)
        if self.max_rows is not None:
            self.max_rows = max(1, self.max_rows // 2)
        elif self.tokens is not None and self.tokens <= self.floor:  # the tokens cannot shrink further: cap the rows
            self.max_rows = max(1, rows // 2)


def run_splitting_on_oom(batch: list[T], run: Callable[[list[T]], list[R]], budget: BatchBudget) -> Iterator[tuple[list[T], list[R]]]:
    """Run a batch, yielding (items, results); on out-of-memory shrink the budget and run its halves instead,
    keeping work done."""
    try:
        yield batch, run(batch)
    except Exception as e:
        budget.shrink_after_oom(e, len(batch))
        mid = len(batch) // 2
        yield from run_splitting_on_oom(batch[:mid], run, budget)
        yield from run_splitting_on_oom(batch[mid:], run, budget)


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


# Forward sizes tried by the CPU probe, and how close to the best throughput the chosen one must come.
_PROBE_TOKENS = (256, 512, 1024, 2048, 4096)
_PROBE_SHARE = 0.9


def cpu_token_budget(hidden: int, inner: int, store: Path | None = None) -> int:
    """Tokens per forward on this CPU: the fewest at which a matmul of the model's shape ([tokens, hidden] x
    [hidden, inner], its MLP) reaches 90% of the best throughput measured over `_PROBE_TOKENS`.

    Larger batches buy a CPU nothing once its matmuls are efficient, and cost memory and padding (every row
    of a batch is padded to its longest). Measured once per shape, thread count and torch version (~0.2 s)
    and remembered in `store`; a store that cannot be read or written only costs the next run the probe.
    """
    import json
    import time

    import torch

    key = f"cpu {hidden}x{inner} threads={torch.get_num_threads()} torch={torch.__version__}"
    remembered: dict = {}
    if store is not None:
        try:
            remembered = json.loads(store.read_text())
            if isinstance(remembered.get(key), int):
                return remembered[key]
        except (OSError, ValueError, AttributeError):
            remembered = {}
    weight = torch.randn(hidden, inner)
    rate = {}
    for tokens in _PROBE_TOKENS:
        x = torch.randn(tokens, hidden)
        x @ weight  # first call: allocation and kernel selection
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            x @ weight
            best = min(best, time.perf_counter() - start)
        rate[tokens] = tokens / max(best, 1e-9)
    top = max(rate.values())
    budget = next(t for t in _PROBE_TOKENS if rate[t] >= _PROBE_SHARE * top)
    if store is not None and isinstance(remembered, dict):
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**remembered, key: budget}))
            os.replace(tmp, store)
        except OSError:
            pass
    return budget
