"""glibc's heap: handing freed memory back to the OS, and room for the contamination scan's arrays.

`trim_heap` returns what the heap holds free (malloc_trim). A model load calls it after the tokenizer: transformers
builds Gemma 3's tokenizer through ~300 MB of short-lived Python objects (its 33 MB tokenizer.json parsed three
times), and torch's big tensors come from mmap and never reuse that heap, so it stayed in the run's resident peak
(736 MB resident after the load, 679 MB after the trim).

`roomy_heap` gives the scan's arrays room in the heap while a shard is scanned, and gives it back afterwards.

Setting MALLOC_TRIM_THRESHOLD_ (Dask's nanny does, for every worker) switches off glibc's adaptive mmap threshold:
every array over 128 KB then becomes a fresh mmap, and the page faults made the scan 2.5 times slower (measured
on one shard: 22 instead of 56 MB per CPU-second). While a shard is scanned the thresholds are raised so a
batch's arrays are reused from the heap; afterwards they are put back as the environment set them and the heap
is trimmed, so a worker that runs other jobs keeps the memory behaviour it was started with.
Linux/glibc only; elsewhere, and when neither variable is set (glibc then adapts by itself), a no-op.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT = 128 * 1024
_ROOM = 64 << 20  # several batches' worth of arrays


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return _GLIBC_DEFAULT


def trim_heap() -> None:
    """Give the heap's free memory back to the OS; not glibc: nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def roomy_heap() -> Iterator[None]:
    libc = None
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, _ROOM)
            libc.mallopt(_M_TRIM_THRESHOLD, _ROOM)
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _env_int("MALLOC_MMAP_THRESHOLD_"))
            libc.mallopt(_M_TRIM_THRESHOLD, _env_int("MALLOC_TRIM_THRESHOLD_"))
            trim_heap()
