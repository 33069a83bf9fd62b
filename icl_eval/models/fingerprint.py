"""Fingerprints of a checkpoint's weights and tokenizer: what a response cache keys on.

Hashing every byte of a 100 GB checkpoint would cost minutes per run, so big weight files are identified by
their safetensors header (names, dtypes, shapes, offsets), their size and evenly spaced samples of their bytes;
fine-tuning touches every sampled block of a trained matrix, so it shows. Small files are hashed whole.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
)
WHOLE_FILE_LIMIT = 64 << 20  # files up to this size are hashed completely
SAMPLE_BLOCKS = 64
BLOCK = 64 << 10


def _safetensors_header(f, size: int) -> bytes:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets), or b'' if it is not one."""
    if size < 8:
        return b""
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n) if 0 < n <= min(size - 8, 100 << 20) else b""


def weight_file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            h.update(_safetensors_header(f, size))
        if size <= WHOLE_FILE_LIMIT:
            f.seek(0)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            step = (size - BLOCK) // (SAMPLE_BLOCKS - 1)
            for i in range(SAMPLE_BLOCKS):
                f.seek(i * step)
                h.update(f.read(BLOCK))
    return h.hexdigest()


def folder_digest(folder: Path, names: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()) -> str:
    """Digest of the weight files (by suffix, sampled) and other files (by name, whole) found in a folder."""
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
    """For a model with no files (built in memory): every tensor's shape and a strided sample of its values."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().float().cpu().flatten()
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].numpy().tobytes())
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
