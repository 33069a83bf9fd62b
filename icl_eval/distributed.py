"""Data-parallel evaluation: every process scores its shard of each request list, and all get every result.

Launch with `accelerate launch --multi_gpu --num_processes N -m icl_eval run ...` (one or several nodes) or
`torchrun --nproc_per_node N -m icl_eval run ...` (also on CPUs, where accelerate's own multi-CPU launch
needs MPI). Each process loads the model once on its own device; prompts, demonstrations and the --limit
subset are seeded and identical in every process, so only the model calls are split. Requests with the same
context go to the same process, keeping shared-prefix reuse intact, and results come back in request order,
so the output equals a one-process run (scores within float rounding of a different batch composition).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init() -> tuple[int, int, str]:
    """Join the process group when launched with several processes: (rank, world size, device for this process)."""
    rank, size, local = world()
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if size > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return rank, size, device


def broadcast(value: Any) -> Any:
    """Rank 0's value in every process (e.g. the run id); the value itself when run plainly."""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shard(keys: Sequence[str], weights: Sequence[int], rank: int, size: int) -> list[int]:
    """Indices this rank handles: requests sharing a key stay together; groups go to the least loaded rank.

    Deterministic from the inputs alone, so every process computes the same assignment without talking.
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    load = [0] * size
    mine: list[int] = []
    for key in sorted(groups, key=lambda k: (-sum(weights[i] for i in groups[k]), k)):
        target = min(range(size), key=lambda r: (load[r], r))
        load[target] += sum(weights[i] for i in groups[key])
        if target == rank:
            mine += groups[key]
    return sorted(mine)


class DataParallel:
    """Wraps a backend (HFModel or anything with the same methods); everything else passes through."""

    def __init__(self, model: Any, rank: int, size: int) -> None:
        self.model = model
        self.rank = rank
        self.size = size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def settings(self) -> dict[str, Any]:
        return {**self.model.settings(), "processes": self.size}

    def loglikelihood(self, requests, progress=None, on_result=None):
        keys = [r.context for r in requests]
        return self._split("loglikelihood", requests, keys, [len(r.context) + len(r.continuation) for r in requests], progress, on_result)

    def generate(self, requests, progress=None, on_result=None):
        return self._split("generate", requests, [str(i) for i in range(len(requests))], [len(r.context) + r.max_new_tokens for r in requests], progress, on_result)

    def loglikelihood_rolling(self, requests, progress=None, on_result=None):
        # By document: a document's windows stay in one process, which sums them in a fixed order.
        return self._split("loglikelihood_rolling", requests, [str(i) for i in range(len(requests))], [len(r.text) for r in requests], progress, on_result)

    def _split(self, method: str, requests, keys, weights, progress, on_result):
        mine = shard(keys, weights, self.rank, self.size)
        local_on_result = (lambda j, r: on_result(mine[j], r)) if on_result else None
        local = getattr(self.model, method)([requests[i] for i in mine], progress, local_on_result)
        gathered: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(gathered, (mine, local))
        results: list[Any] = [None] * len(requests)
        for indices, outs in gathered:
            for i, out in zip(indices, outs):
                results[i] = out
        return results
