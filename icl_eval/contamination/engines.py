"""Running the scan kernel over every shard: a local process pool, or Dask.

Both send the gram table to each worker once and return shard results in shard order, which `scan.merge`
turns into the same answer whichever engine ran.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from icl_eval.contamination.corpus import Shard
from icl_eval.contamination.index import GramTable
from icl_eval.contamination.normalise import fast_table
from icl_eval.contamination.scan import ScanOptions, scan_shard
from icl_eval.errors import IclEvalError

if TYPE_CHECKING:  # dask is imported only when the dask engine runs
    from dask.distributed import LocalCluster

ENGINES = ("local", "dask")

_worker_table: GramTable | None = None


_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5


def _exit_with_parent(parent: int) -> None:
    """A pool worker must not outlive the command: after `kill -9` of the parent nobody would ever shut it down.

    On Linux the kernel sends SIGKILL when the parent goes (prctl PR_SET_PDEATHSIG; it fires when the thread that
    started the worker ends, which here is the one holding the pool until every shard is done). Elsewhere, or
    when prctl is refused, a daemon thread polls the parent's pid.
    """
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(table: GramTable, parent: int) -> None:
    global _worker_table
    _exit_with_parent(parent)
    _worker_table = table


def _scan_in_worker(shard: Shard, options: ScanOptions) -> dict:
    assert _worker_table is not None
    return scan_shard(_worker_table, shard, options)


def _start_method() -> str:
    """fork when it is safe: workers start at once and share the tables already built.

    A parent holding threads (torch, tokenizers, a GPU runtime) must spawn instead: a fork would copy their
    locks half-held.
    """
    if sys.platform == "linux" and threading.active_count() == 1 and not {"torch", "tokenizers"} & sys.modules.keys():
        return "fork"
    return "spawn"


def warm_up(table: GramTable) -> None:
    """Build the lookup tables and bitmaps a scan needs (each process does so once, on first use)."""
    fast_table()
    table.candidates(np.zeros(0, dtype=np.uint64))


def run_local(table: GramTable, shards: list[Shard], options: ScanOptions, workers: int) -> list[dict]:
    workers = max(1, min(workers, len(shards)))
    if workers == 1:
        return [scan_shard(table, s, options) for s in shards]
    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "fork":
        warm_up(table)  # built once here, shared with every worker
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(table, os.getpid())) as pool:
        return list(pool.map(_scan_in_worker, shards, [options] * len(shards)))


def dask_setup(worker: object) -> None:
    """Dask calls this in every worker that preloads this module (`dask worker --preload icl_eval.contamination.engines`).

    The scan's imports and lookup tables are then ready before the first shard arrives (~0.4 s per worker).
    """
    fast_table()


def local_cluster(workers: int) -> LocalCluster:
    """A Dask cluster of single-threaded worker processes on this machine, on loopback only.

    Its workers preload the scan (see `dask_setup`) and run without Dask's statistical profiler: sampling the
    task's stack every 10 ms cost the scan about 15% of its speed (measured per CPU-second on one worker).
    """
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": False}):  # the nanny passes it on to the workers
        return LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=":0", preload=[__name__])


def run_dask(table: GramTable, shards: list[Shard], options: ScanOptions, workers: int, scheduler: str | None) -> list[dict]:
    import dask
    import dask.bag as db
    from dask.distributed import Client

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise IclEvalError(f"--scheduler {scheduler}: cannot connect ({e}); start one with `dask scheduler` or drop --scheduler for a local cluster") from None
        else:
            cluster = local_cluster(workers)
            client = Client(cluster)
        with client:
            # Broadcast once; every partition's task then depends on the same remote copy. hash=False: a random
            # key, where tokenizing the table to name it took longer than sending it.
            table_on_workers = dask.delayed(client.scatter(table, broadcast=True, hash=False))
            bag = db.from_sequence(shards, npartitions=max(1, len(shards)))
            return bag.map(_scan_bag_item, table_on_workers, options).compute(scheduler=client)
    finally:
        if cluster is not None:
            cluster.close()


def _scan_bag_item(shard: Shard, table: GramTable, options: ScanOptions) -> dict:
    return scan_shard(table, shard, options)


def run(table: GramTable, shards: list[Shard], options: ScanOptions, engine: str = "local", workers: int | None = None, scheduler: str | None = None) -> list[dict]:
    workers = workers or os.cpu_count() or 1
    if engine == "local":
        if scheduler:
            raise IclEvalError("--scheduler applies to --engine dask; add --engine dask or drop --scheduler")
        return run_local(table, shards, options, workers)
    if engine == "dask":
        return run_dask(table, shards, options, workers, scheduler)
    raise IclEvalError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
