"""Loading a task's documents: a local file under the data root, else the hub, else a generator plugin."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from icl_eval.errors import IclEvalError
from icl_eval.task_config import DataSource, TaskConfig

Doc = dict


def data_root(data_dir: str | None) -> Path | None:
    root = data_dir or os.environ.get("ICL_EVAL_DATA_DIR")
    return Path(root) if root else None


def open_text(path: Path) -> IO[str]:
    """Open plain, .gz, .bz2 or .zst text transparently."""
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    return open(path, encoding="utf-8")


def _strip_compression(name: str) -> str:
    for ext in (".gz", ".bz2", ".zst"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_jsonl(path: Path) -> Iterator[Doc]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise IclEvalError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(doc, dict):
                raise IclEvalError(f"{path}:{lineno}: expected a JSON object per line, got {type(doc).__name__}")
            yield doc


def read_json(path: Path) -> Iterator[Doc]:
    with open_text(path) as f:
        try:
            docs = json.load(f)
        except json.JSONDecodeError as e:
            raise IclEvalError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(docs, dict) and len(docs) == 1 and isinstance(next(iter(docs.values())), list):
        docs = next(iter(docs.values()))  # {"data": [...]} wrappers are common
    if not isinstance(docs, list):
        raise IclEvalError(f"{path}: expected a JSON list of objects")
    yield from docs


# Format name -> reader. A new local format is one function here.
READERS: dict[str, Callable[[Path], Iterator[Doc]]] = {"jsonl": read_jsonl, "json": read_json}


def infer_format(path: Path) -> str:
    suffix = Path(_strip_compression(path.name)).suffix.lstrip(".")
    return {"txt": "text", "tsv": "tsv", "jsonl": "jsonl", "json": "json", "parquet": "parquet"}.get(suffix, suffix)


def read_local(src: DataSource, root: Path) -> list[Doc]:
    path = Path(src.local) if Path(src.local).is_absolute() else root / src.local
    fmt = src.format or infer_format(path)
    reader = READERS.get(fmt)
    if reader is None:
        raise IclEvalError(f"{path}: no reader for format '{fmt}'; set data.format to one of {', '.join(sorted(READERS))}")
    try:
        return list(reader(path))
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:  # zlib.error: a corrupt .gz
        raise IclEvalError(f"{path}: cannot read data file ({e}); re-download it") from None


def read_hub(src: DataSource) -> list[Doc]:
    import datasets

    ds = datasets.load_dataset(src.hub, src.hub_name, split=src.hub_split)
    return [dict(row) for row in ds]


def _local_path(src: DataSource, root: Path | None) -> Path | None:
    if not src.local:
        return None
    if Path(src.local).is_absolute():
        return Path(src.local)
    return root / src.local if root else None


def load_source(src: DataSource, data_dir: str | None, seed: int, what: str) -> tuple[list[Doc], str]:
    """Documents and a description of where they came from. Local first: it is explicit and offline."""
    root = data_root(data_dir)
    local = _local_path(src, root)
    if local is not None and local.exists():
        docs = read_local(src, root or Path("."))
        if not docs:
            raise IclEvalError(f"{local}: the data file holds no examples; re-download it")
        return docs, str(local)
    hub_error = ""
    if src.hub and not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        try:
            return read_hub(src), f"hub:{src.hub}" + (f"/{src.hub_name}" if src.hub_name else "") + f":{src.hub_split}"
        except Exception as e:  # the hub raises many types (connection, missing config, auth)
            hub_error = f" (hub said: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    if src.generator:
        from icl_eval.generators import generate

        return generate(src.generator, seed, src.generator_args), f"generated:{src.generator}"
    tried = []
    if src.hub:
        tried.append(f"hub dataset '{src.hub}'" + (f" config '{src.hub_name}'" if src.hub_name else "") + hub_error)
    if src.local:
        tried.append(f"local file {local}" if local else f"local file <data-dir>/{src.local} (no --data-dir or ICL_EVAL_DATA_DIR given)")
    raise IclEvalError(f"no data for {what}: tried {' and '.join(tried)}; download it there or pass --data-dir DIR holding {src.local or 'the files'}")


def load_docs(task: TaskConfig, data_dir: str | None, seed: int = 1234) -> list[Doc]:
    """The evaluation split of a task; doc_id is the index in this list."""
    return load_source(task.data, data_dir, seed, f"task '{task.name}' ({task.path})")[0]
