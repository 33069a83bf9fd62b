"""A checkpoint folder's tokenizer, kept between runs once it has proved slow to build.

transformers rebuilds some tokenizers from scratch on every load: GemmaTokenizer parses its 33 MB tokenizer.json
three times with Python's json module and then builds the 262k-entry BPE model, 2.9 s of a 9 s start-up on a CPU.
The object it builds is pickled once under $XDG_CACHE_HOME/icl-eval/tokenizers/ and unpickled on later loads
(1.0 s, most of it the Rust BPE model reading its own state back). The key is every byte of the folder's files
other than weights, plus the transformers and tokenizers versions, so an edited vocabulary, config or chat
template, or an upgrade, builds afresh. Only loads slower than SLOW_LOAD_S are kept: a fast tokenizer is no faster
from a pickle, and the tiny ones tests build would only fill the folder.

The pickles are written by this module into the user's own cache folder, and read from nowhere else. Anything
that goes wrong with them (an unwritable folder, a corrupt or truncated file, a class that no longer unpickles)
falls back to the ordinary load; the cache never decides what a run computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from icl_eval.models.fingerprint import WEIGHT_SUFFIXES, store_path

SLOW_LOAD_S = 0.2
KEEP = 8  # tokenizers kept, the least recently used dropped first (Gemma's is 28 MB)


def cache_folder() -> Path:
    return store_path().parent / "tokenizers"


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    """AutoTokenizer.from_pretrained(path), from the cache when this folder's tokenizer was kept before."""
    from transformers import AutoTokenizer

    # Remote code can change between runs without a file here changing; a hub id has no folder to key on.
    key = None if trust_remote_code or not Path(path).is_dir() else _key(Path(path))
    if key is not None and (kept := _read(key)) is not None:
        _return_freed_heap()
        return kept
    began = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if key is not None and time.perf_counter() - began > SLOW_LOAD_S:
        _write(key, tokenizer)
    _return_freed_heap()
    return tokenizer


def _return_freed_heap() -> None:
    """Hand the heap a tokenizer build freed back to the OS (glibc keeps it otherwise).

    Building or unpickling Gemma's tokenizer passes through ~300 MB of short-lived Python objects. glibc keeps the
    freed heap, and torch's big tensors come from mmap and never reuse it, so it would stay in the run's resident
    peak (measured: 934 MB resident after unpickling, 659 MB after malloc_trim). Not glibc: nothing to do.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _key(folder: Path) -> str:
    import tokenizers
    import transformers

    h = hashlib.sha256(f"transformers={transformers.__version__} tokenizers={tokenizers.__version__}\n".encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES:
            h.update(f"{f.name}=".encode() + hashlib.sha256(f.read_bytes()).digest() + b"\n")
    return h.hexdigest()


def _read(key: str) -> Any | None:
    path = cache_folder() / f"{key}.pickle"
    try:
        with path.open("rb") as f:
            tokenizer = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception:  # truncated, corrupt, or from classes that changed: build it again and keep the new one
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept longest
    return tokenizer


def _write(key: str, tokenizer: Any) -> None:
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tokenizer-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(tokenizer, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, folder / f"{key}.pickle")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        kept = sorted(folder.glob("*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink()
    except Exception:
        pass  # a tokenizer that cannot be kept only costs the next run the ordinary load
