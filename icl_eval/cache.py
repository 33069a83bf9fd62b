"""A response cache in SQLite: every model response is stored as it is computed, so a rerun resumes for free.

Keys are hashes of the request itself, every field (its task's key and, for generation, its settings
included), plus everything else that could change the response: the model and tokenizer fingerprint, the BOS
policy and the code version. Values are JSON, never pickles, so reading a cache file cannot run code; results
read back carry cached=True, a flag that is never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationResult, LoglikelihoodResult, Request, RollingResult

DEFAULT_NAME = Path(".cache") / "responses.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)"
_RESULT_TYPES: dict[str, type] = {"loglikelihood": LoglikelihoodResult, "generate": GenerationResult, "loglikelihood_rolling": RollingResult}
_NOT_STORED = "cached"  # a result field that says where the result came from, not what it is


def default_path(output: str | Path) -> Path:
    """Beside the run folders, not inside one: each run gets a new id, and the same command must find the cache."""
    return Path(output) / DEFAULT_NAME


def request_key(kind: str, request: Request, namespace: str) -> str:
    """The cache key of one request: every field by name (its task among them); `namespace` holds the model and
    code parts."""
    fields = {"kind": kind, "namespace": namespace, "request": asdict(request)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()  # ASCII escapes: even lone surrogates hash


# Libraries whose upgrade can change a response (attention kernels, tokenization, numerics).
_LIBRARIES = ("torch", "transformers", "tokenizers")


def code_sources(model: Any) -> list[Path]:
    """Every source file that can change a response: the backend's module, every model backend, loader, scorer
    and generator (models/*.py), request batching and prefix sharing, the rolling windows, the request/result
    types, and this file's encoding."""
    from icl_eval import batching, requests, rolling

    package_models = Path(__file__).resolve().parent / "models"
    files = [Path(sys.modules[type(model).__module__].__file__).resolve()]
    files += sorted(package_models.glob("*.py"))
    files += [Path(m.__file__).resolve() for m in (batching, rolling, requests)] + [Path(__file__).resolve()]
    return list(dict.fromkeys(files))


def code_version(model: Any) -> str:
    """The package version plus a hash of the scoring code and the library versions: a development checkout whose
    hf.py or batching changed, or an upgraded transformers, must not reuse responses computed before, even though
    __version__ did not move."""
    from importlib import metadata

    from icl_eval import __version__

    h = hashlib.sha256()
    for path in code_sources(model):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib}=={metadata.version(lib)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib} absent\n".encode())
    return f"{__version__}+{h.hexdigest()[:12]}"


def namespace(model_fingerprint: str, bos_policy: str, version: str) -> str:
    return json.dumps({"model": model_fingerprint, "bos": bos_policy, "version": version}, sort_keys=True)


def _writable(path: Path) -> bool:
    """Whether SQLite can write this cache: the file, and its folder (WAL keeps -wal and -shm files beside it)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _damaged(path: Path, e: Exception | str) -> IclEvalError:
    return IclEvalError(
        f"--cache {path}: the SQLite file is damaged ({e}); delete it (its responses are recomputed), pass another --cache PATH, or --no-cache"
    )


def _while_locked(step: Callable[[], object], seconds: float = 30.0) -> None:
    """Run a set-up step, retrying while another process holds the lock: switching to WAL (data-parallel ranks
    opening one cache at once) returns SQLITE_BUSY at once instead of waiting out the busy timeout."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class ResponseCache:
    """One SQLite file in WAL mode: readers never block the writer, and a killed writer loses at most its open batch.

    A cache that cannot be written (file or folder read-only) is opened read-only: its responses are reused and
    new ones are computed but not stored, with one note saying so (see CachedModel).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.read_only = False
        try:
            if self.path.exists() and not _writable(self.path):
                self.db = self._open_read_only()
                self.read_only = True
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30)
                _while_locked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no committed row, only speed is traded
                _while_locked(lambda: (self.db.execute(_SCHEMA), self.db.commit()))
        except sqlite3.DatabaseError as e:
            raise IclEvalError(f"--cache {self.path}: not a usable SQLite response cache ({e}); delete the file, pass another --cache PATH, or --no-cache") from None
        except OSError as e:
            raise IclEvalError(f"--cache {self.path}: cannot create the cache ({e.strerror or e}); pass a writable --cache PATH or --no-cache") from None
        self._check()

    def _open_read_only(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # a WAL file in a read-only folder cannot make its -shm: read it as it is
            db.close()
            db = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30)
        return db

    def _check(self) -> None:
        """Refuse a damaged file up front (pages zeroed or overwritten), not with a traceback halfway through a run."""
        try:
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)").fetchall()]
            self.db.execute("SELECT key, kind, value FROM responses LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None
        if problems != ["ok"]:
            raise _damaged(self.path, "; ".join(problems)[:200])

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self.db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk).fetchall())
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None
        return found

    def put(self, key: str, kind: str, value: str) -> None:
        """Store one row (committed with its batch); nothing is stored once the cache turned out read-only."""
        if self.read_only:
            return
        try:
            self.db.execute("INSERT OR REPLACE INTO responses (key, kind, value) VALUES (?, ?, ?)", (key, kind, value))
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e):  # e.g. a read-only mount: reuse, but stop storing
                raise IclEvalError(f"--cache {self.path}: cannot write ({e}); free space, pass another --cache PATH, or --no-cache") from None
            self.read_only = True
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None

    def commit(self) -> None:
        if self.read_only:
            return
        try:
            self.db.commit()
        except sqlite3.OperationalError as e:
            if "readonly" in str(e):
                self.db.rollback()
                self.read_only = True
                return
            raise IclEvalError(f"--cache {self.path}: cannot write ({e}); free space, pass another --cache PATH, or --no-cache") from None

    def __len__(self) -> int:
        try:
            return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None

    def close(self) -> None:
        if not self.read_only:
            self.db.commit()
        self.db.close()


def _encode(result: Any) -> str:
    return json.dumps({k: v for k, v in asdict(result).items() if k != _NOT_STORED})


def _field_value(value: Any, expected: Any) -> tuple[bool, Any]:
    """(ok, value) for one stored field: JSON has no int/float/bool distinction Python would enforce for us."""
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(value, (int, float)) else value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return (isinstance(value, expected) if isinstance(expected, type) else True), value


def _decode(kind: str, value: Any) -> Any | None:
    """A stored result, marked cached, or None when the row cannot be read as one (then it is recomputed and
    overwritten): not JSON, not an object, unknown or missing fields, or a field of the wrong type ("1.5" for a
    float)."""
    cls = _RESULT_TYPES[kind]
    try:
        data = json.loads(value)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    types = typing.get_type_hints(cls)
    types.pop(_NOT_STORED, None)  # never written: a row holding it is not one of ours
    checked = {}
    for name, v in data.items():
        if name not in types:
            return None
        ok, checked[name] = _field_value(v, types[name])
        if not ok:
            return None
    if any(f.name not in checked and f.default is MISSING and f.default_factory is MISSING for f in fields(cls)):  # a required field is absent
        return None
    return replace(cls(**checked), cached=True)


class CachedModel:
    """Wraps a backend: hits come from the cache, only misses reach the model, each result is stored as it arrives.

    Rows are committed at the backend's batch boundaries (its progress callback), so after a kill the missing
    requests are exactly the unfinished batches, and a rerun plans the very same batches: bit-identical results.
    Results read back carry cached=True: how many a task reused is the count of those.
    """

    def __init__(self, model: Any, cache: ResponseCache, fingerprint: str, bos_policy: str, version: str) -> None:
        self.model = model
        self.cache = cache
        self.fingerprint = fingerprint
        self.bos_policy = bos_policy
        self.version = version
        self._told_read_only = False

    def __getattr__(self, name: str) -> Any:  # max_length, count_tokens, name, ...: the backend's own
        return getattr(self.model, name)

    def settings(self) -> dict[str, Any]:
        return {**self.model.settings(), "cache": str(self.cache.path)}

    def loglikelihood(self, requests, progress=None, on_result=None):
        return self._run("loglikelihood", self.model.loglikelihood, requests, progress, on_result)

    def generate(self, requests, progress=None, on_result=None):
        return self._run("generate", self.model.generate, requests, progress, on_result)

    def loglikelihood_rolling(self, requests, progress=None, on_result=None):
        return self._run("loglikelihood_rolling", self.model.loglikelihood_rolling, requests, progress, on_result)

    def _run(self, kind: str, compute: Callable, requests: Sequence, progress, on_result) -> list:
        ns = namespace(self.fingerprint, self.bos_policy, self.version)
        keys = [request_key(kind, r, ns) for r in requests]
        stored = self.cache.get_many(keys)
        results: list[Any] = [None] * len(requests)
        for i, key in enumerate(keys):
            if key in stored:
                results[i] = _decode(kind, stored[key])
        hit_ids = [i for i, r in enumerate(results) if r is not None]
        miss_ids = [i for i, r in enumerate(results) if r is None]
        for i in hit_ids:
            if on_result:
                on_result(i, results[i])
        if progress and hit_ids:
            progress(len(hit_ids), 0)
        if not miss_ids:
            return results

        def store(j: int, result: Any) -> None:
            i = miss_ids[j]
            results[i] = result
            self.cache.put(keys[i], kind, _encode(result))
            if self.cache.read_only and not self._told_read_only:
                self._told_read_only = True
                print(
                    f"note: the response cache {self.cache.path} is read-only: its stored responses are reused, new ones are "
                    "computed but not stored (make it writable or pass another --cache PATH to keep them)",
                    file=sys.stderr,
                )
            if on_result:
                on_result(i, result)

        def batch_done(n_requests: int, n_tokens: int) -> None:
            self.cache.commit()
            if progress:
                progress(n_requests, n_tokens)

        try:
            compute([requests[i] for i in miss_ids], batch_done, store)
        except BaseException:
            # Committed batches stay; a half-stored batch is dropped so that a rerun plans the same batches again.
            self.cache.db.rollback()
            raise
        self.cache.commit()
        return results
