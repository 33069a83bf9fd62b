"""Grouping requests into batches: longest first, under a token budget that out-of-memory errors halve."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(lengths: Sequence[int], max_rows: int | None, token_budget: int | None, forward_cost: int | None = None) -> list[list[int]]:
    """Index batches over `lengths`, longest first: a batch's padded size (rows x its longest row) stays in budget.

    Longest first so that an out-of-memory shows up on the first batch, not hours in. Without `forward_cost`
    each batch is filled before the next starts. With it (what one forward costs beyond its tokens, in tokens:
    measured on a CPU, `cpu_forward_cost`), the batches are cut where padded tokens plus `forward_cost` per
    forward come out least, so a few long rows no longer pad a run of short ones to their width (zero-shot
    PIQA's filled batches were 28% padding).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if forward_cost is None or token_budget is None or len(order) < 2:
        return _filled_batches(order, lengths, max_rows, token_budget)
    import numpy as np

    widths = [lengths[i] for i in order]
    n = len(order)
    best = np.full(n + 1, np.inf)  # best[j]: least cost of the first j rows in batches
    best[0] = 0.0
    start = np.zeros(n + 1, dtype=np.int64)  # where the last batch of the first j rows starts
    for i, width in enumerate(widths):  # a batch starting at row i is padded to widths[i], the longest
        rows = min(n - i, max(1, token_budget // max(1, width)), max_rows or n)
        cost = best[i] + forward_cost + width * np.arange(1, rows + 1)
        better = cost < best[i + 1 : i + 1 + rows]
        best[i + 1 : i + 1 + rows][better] = cost[better]
        start[i + 1 : i + 1 + rows][better] = i
    cuts, j = [], n
    while j > 0:
        cuts.append((int(start[j]), j))
        j = int(start[j])
    return [order[a:b] for a, b in reversed(cuts)]


def _filled_batches(order: list[int], lengths: Sequence[int], max_rows: int | None, token_budget: int | None) -> list[list[int]]:
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
    forward_cost: int | None = None  # one forward's cost beyond its tokens, in tokens (plan_batches); None: fill
    _configured: tuple[int | None, int | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._configured = (self.max_rows, self.tokens)

    def reset(self) -> None:
        self.max_rows, self.tokens = self._configured

    def plan(self, lengths: Sequence[int], tokens: int | None = None) -> list[list[int]]:
        """plan_batches under this budget as it stands now (halved after an out-of-memory), or under `tokens`
        per batch instead of its own token budget (generation's prefills, which keep one position's logits)."""
        return plan_batches(lengths, self.max_rows, tokens or self.tokens, self.forward_cost)

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
    import torch

    def measure() -> int:
        weight = torch.randn(hidden, inner)
        rate = {}
        for tokens in _PROBE_TOKENS:
            x = torch.randn(tokens, hidden)
            rate[tokens] = tokens / max(_fastest(lambda: x @ weight), 1e-9)
        top = max(rate.values())
        return next(t for t in _PROBE_TOKENS if rate[t] >= _PROBE_SHARE * top)

    return _remembered(store, f"cpu {hidden}x{inner} threads={torch.get_num_threads()} torch={torch.__version__}", measure)


def efficient_forward(tokens: int, forward_cost: int | None, share: float = _PROBE_SHARE) -> int:
    """A CPU budget of at least the tokens whose forward spends no more than 1 - `share` on its fixed cost
    (by default the probe's 90%): the matmul probe alone gave Gemma 3 270M 256 tokens at two threads, where
    its measured forward cost of 61 tokens made a one-question forward a quarter overhead."""
    if forward_cost is None:
        return tokens
    return max(tokens, round(forward_cost * share / (1 - share)))


# Forward sizes timed by the forward-cost probe: small enough to be quick, far enough apart to fit a line.
_COST_TOKENS = (32, 256)


def cpu_forward_cost(forward: Callable[[int], object], model_key: str, store: Path | None = None, longest: int = 1 << 30) -> int:
    """What one forward of the model costs on this CPU beyond its tokens, in tokens: `forward(n)` runs the
    model on n tokens (at most `longest`, its context), timed at `_COST_TOKENS`, and a line t = fixed +
    n x per-token through the two gives fixed / per-token (SmolLM2-135M at two threads: some 30 tokens, the
    layers' launches and the weights' reads). plan_batches weighs padding against it. Measured once per model
    (`model_key`), thread count and torch version (~1 s for a 135M model) and remembered in `store`, as the
    token budget is."""
    import torch

    sizes = (min(_COST_TOKENS[0], max(1, longest // 8)), min(_COST_TOKENS[1], longest))

    def measure() -> int:
        if sizes[0] >= sizes[1]:
            return 0
        small, big = (_fastest(lambda n=n: forward(n)) for n in sizes)
        per_token = max(big - small, 1e-9) / (sizes[1] - sizes[0])
        return max(0, round(small / per_token - sizes[0]))

    return _remembered(store, f"forward {model_key} threads={torch.get_num_threads()} torch={torch.__version__}", measure)


def _fastest(run: Callable[[], object], repeats: int = 3) -> float:
    """The least time of `repeats` calls of `run`, after one untimed call (allocation, kernel selection)."""
    import time

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _remembered(store: Path | None, key: str, measure: Callable[[], int]) -> int:
    """`measure()` once per `key`, kept in the JSON file `store` (None: not kept); an unreadable or unwritable
    store only costs the next run the measurement."""
    import json

    remembered: dict = {}
    if store is not None:
        try:
            remembered = json.loads(store.read_text())
            if isinstance(remembered.get(key), int):
                return remembered[key]
        except (OSError, ValueError, AttributeError):
            remembered = {}
    value = measure()
    if store is not None and isinstance(remembered, dict):
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**remembered, key: value}))
            os.replace(tmp, store)
        except OSError:
            pass
    return value
