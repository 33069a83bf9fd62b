"""Fingerprints of a checkpoint's weights and tokenizer: what a response cache keys on.

Every byte of every weight file is hashed: a sample of blocks would miss an edit between them (one scaled
attention matrix in a 500 MB file), and the cache would serve the old model's responses. Hashing is fast
(sha256 runs at about 2 GB/s from the page cache here) but a 100 GB checkpoint still costs a minute, so the
digest of a big file is remembered in the user's cache folder, keyed by path, size, mtime, ctime, inode and
device: a rerun on unchanged files reads nothing, and any write to a file (which moves its mtime and ctime)
hashes it again. A folder where that record cannot be written only means the next run hashes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
)
READ_CHUNK = 8 << 20
# Digests of files at least this big are remembered between runs; smaller ones are cheaper to hash again.
REMEMBER_ABOVE = 64 << 20
# A digest is remembered only for a file last written this long before hashing began: file times tick coarsely
# (a few ms), so a write in the same tick as an earlier one could leave every stat field unchanged ("racy git").
SETTLE_NS = 2_000_000_000
STORE_NAME = "weight-digests.json"
_STORE_MAX_ENTRIES = 4096


def store_path() -> Path:
    """Where remembered digests live: $XDG_CACHE_HOME/icl-eval, else ~/.cache/icl-eval."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "icl-eval" / STORE_NAME


def _file_identity(st: os.stat_result) -> dict[str, int]:
    # ctime cannot be set back by a user (touch, rsync -t only set mtime): an in-place edit always moves it.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _load_store() -> dict[str, Any]:
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_store(entries: dict[str, Any]) -> None:
    """Write the remembered digests atomically; an unwritable cache folder only costs the next run a rehash."""
    path = store_path()
    if len(entries) > _STORE_MAX_ENTRIES:  # oldest first: dicts keep insertion order and updates re-insert
        entries = dict(list(entries.items())[-_STORE_MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


def content_digest(path: Path) -> str:
    """sha256 of every byte of the file."""
    h = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def weight_file_digest(path: Path) -> str:
    """Name, size and full content of one weight file; a big file's digest is reused while its stat is unchanged."""
    size = path.stat().st_size
    return hashlib.sha256(f"{path.name}:{size}:{file_sha256(path)}".encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of every byte of the file, remembered between runs for a big file while its stat is unchanged."""
    st = path.stat()
    identity = _file_identity(st)
    if st.st_size < REMEMBER_ABOVE:
        content = content_digest(path)
    else:
        key = str(path.resolve())
        store = _load_store()
        known = store.get(key)
        if isinstance(known, dict) and {k: known.get(k) for k in identity} == identity and isinstance(known.get("sha256"), str):
            content = known["sha256"]
        else:
            settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS
            content = content_digest(path)
            if settled and _file_identity(path.stat()) == identity:  # and not written to while we read it
                store.pop(key, None)
                store[key] = {**identity, "sha256": content}
                _save_store(store)
    return content


def folder_digest(folder: Path, names: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()) -> str:
    """Digest of the weight files (by suffix) and other files (by name) found in a folder, each hashed whole."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        if suffixes and f.suffix in suffixes:
            h.update(f"{f.name}={weight_file_digest(f)}\n".encode())
        elif f.name in names:
            h.update(f"{f.name}=".encode() + hashlib.sha256(f.read_bytes()).digest() + b"\n")
    return h.hexdigest()


def config_digest(config: Any) -> str:
    """The model config without private keys such as _name_or_path: moving a checkpoint must not change it."""
    d = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def parameters_digest(model: Any) -> str:
    """For a model with no files (built in memory): every tensor's name, dtype, shape and every byte of its values."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any, folder: Path | None) -> str:
    """The fast tokenizer's full serialisation (vocabulary, merges, normalizer, special tokens) plus its files."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)]).encode())
    if folder is not None:
        h.update(folder_digest(folder, names=TOKENIZER_FILES).encode())
    return h.hexdigest()


def model_fingerprint(model: Any, tokenizer: Any, path: str, bos_policy: str) -> str:
    """Config, dtype, weights (files, hub revision or tensors), tokenizer and BOS policy in one short hash."""
    folder = Path(path) if path and Path(path).is_dir() else None
    dtype = str(next(model.parameters()).dtype)
    if folder is not None and any(f.suffix in WEIGHT_SUFFIXES for f in folder.iterdir()):
        weights = folder_digest(folder, suffixes=WEIGHT_SUFFIXES)
    elif getattr(model.config, "_commit_hash", None):  # loaded from the hub: the revision names the files
        weights = f"{path}@{model.config._commit_hash}"
    else:
        weights = parameters_digest(model)
    parts = [config_digest(model.config), dtype, weights, tokenizer_digest(tokenizer, folder), bos_policy]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
