"""A response cache in SQLite: every model response is stored as it is computed, so a rerun resumes for free.

Keys are hashes of the request itself plus everything else that could change the response: the model and
tokenizer fingerprint, the task-config hash, the BOS policy and the code version (generation settings are
part of a generation request). Values are JSON, never pickles, so reading a cache file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult

DEFAULT_NAME = Path(".cache") / "responses.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)"
_RESULT_TYPES: dict[str, type] = {"loglikelihood": LoglikelihoodResult, "generate": GenerationResult}


def default_path(output: str | Path) -> Path:
    """Beside the run folders, not inside one: each run gets a new id, and the same command must find the cache."""
    return Path(output) / DEFAULT_NAME


def request_key(kind: str, request: LoglikelihoodRequest | GenerationRequest, namespace: str) -> str:
    """The cache key of one request; `namespace` holds the model, task and settings parts."""
    fields = [kind, namespace, *(list(v) if isinstance(v, tuple) else v for v in asdict(request).values())]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()  # ASCII escapes: even lone surrogates hash


def code_version(model: Any) -> str:
    """The package version plus a hash of the backend's scoring code: a development checkout whose hf.py or
    batching changed must not reuse responses computed by the old code, even though __version__ did not move."""
    from icl_eval import __version__, batching, requests

    h = hashlib.sha256()
    for module in (sys.modules[type(model).__module__], batching, requests):
        h.update(Path(module.__file__).read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def namespace(model_fingerprint: str, task_hash: str, bos_policy: str, version: str) -> str:
    return json.dumps({"model": model_fingerprint, "task": task_hash, "bos": bos_policy, "version": version}, sort_keys=True)


class ResponseCache:
    """One SQLite file in WAL mode: readers never block the writer, and a killed writer loses at most its open batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no committed row, only speed is traded
            self.db.execute(_SCHEMA)
            self.db.commit()
        except sqlite3.DatabaseError as e:
            raise IclEvalError(f"--cache {self.path}: not a usable SQLite response cache ({e}); delete the file, pass another --cache PATH, or --no-cache") from None
        except OSError as e:
            raise IclEvalError(f"--cache {self.path}: cannot create the cache ({e.strerror or e}); pass a writable --cache PATH or --no-cache") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk).fetchall())
        return found

    def put(self, key: str, kind: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses (key, kind, value) VALUES (?, ?, ?)", (key, kind, value))

    def commit(self) -> None:
        try:
            self.db.commit()
        except sqlite3.OperationalError as e:
            raise IclEvalError(f"--cache {self.path}: cannot write ({e}); free space, pass another --cache PATH, or --no-cache") from None

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def _encode(result: Any) -> str:
    return json.dumps(asdict(result))


def _decode(kind: str, value: str) -> Any | None:
    """A stored result, or None when the row cannot be read as one (then it is recomputed and overwritten)."""
    try:
        return _RESULT_TYPES[kind](**json.loads(value))
    except (ValueError, TypeError):
        return None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class CachedModel:
    """Wraps a backend: hits come from the cache, only misses reach the model, each result is stored as it arrives.

    Rows are committed at the backend's batch boundaries (its progress callback), so after a kill the missing
    requests are exactly the unfinished batches, and a rerun plans the very same batches: bit-identical results.
    """

    def __init__(self, model: Any, cache: ResponseCache, fingerprint: str, bos_policy: str, version: str) -> None:
        self.model = model
        self.cache = cache
        self.fingerprint = fingerprint
        self.bos_policy = bos_policy
        self.version = version
        self.task_hash = ""
        self.stats = CacheStats()

    def __getattr__(self, name: str) -> Any:  # max_length, count_tokens, name, ...: the backend's own
        return getattr(self.model, name)

    def begin_task(self, task_hash: str) -> CacheStats:
        """Called by the evaluator before a task's requests; returns fresh counters for that task and shot count."""
        self.task_hash = task_hash
        self.stats = CacheStats()
        return self.stats

    def loglikelihood(self, requests, progress=None, on_result=None):
        return self._run("loglikelihood", self.model.loglikelihood, requests, progress, on_result)

    def generate(self, requests, progress=None, on_result=None):
        return self._run("generate", self.model.generate, requests, progress, on_result)

    def _run(self, kind: str, compute: Callable, requests: Sequence, progress, on_result) -> list:
        ns = namespace(self.fingerprint, self.task_hash, self.bos_policy, self.version)
        keys = [request_key(kind, r, ns) for r in requests]
        stored = self.cache.get_many(keys)
        results: list[Any] = [None] * len(requests)
        for i, key in enumerate(keys):
            if key in stored:
                results[i] = _decode(kind, stored[key])
        hit_ids = [i for i, r in enumerate(results) if r is not None]
        miss_ids = [i for i, r in enumerate(results) if r is None]
        self.stats.hits += len(hit_ids)
        self.stats.misses += len(miss_ids)
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
