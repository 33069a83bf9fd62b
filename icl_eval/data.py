"""Loading a task's documents: a local file under the data root, else the hub, else a generator plugin."""

from __future__ import annotations

import ast
import bz2
import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from icl_eval.errors import IclEvalError
from icl_eval.formats import FORMATS
from icl_eval.formats_rc import HUB_LAYOUTS, RC_FORMATS
from icl_eval.hub import hub_reachable
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


# A lone UTF-16 surrogate ("\ud800") decodes, then fails when the prompt is hashed or logged.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _loads(text: str, path: Path, lineno: int | None = None):
    """json.loads for data files: NaN/Infinity refused, deep nesting and lone surrogates refused as one line
    naming the file and line, not a crash later when the prompt is hashed or logged."""
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        line = lineno if lineno is not None else e.lineno
        fix = "; fix or remove that line" if lineno is not None else ""
        raise IclEvalError(f"{path}:{line}: not valid JSON ({e.msg}){fix}") from None
    except ValueError as e:
        raise IclEvalError(f"{where}: {e}; fix or remove that value") from None
    except RecursionError:
        raise IclEvalError(f"{where}: JSON nested too deeply to read; a data record is a few levels deep") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise IclEvalError(f"{where}: a string holds a lone UTF-16 surrogate ({e.object[e.start:e.end]!r}), which is not text; fix that value") from None
    return value


def read_jsonl(path: Path) -> Iterator[Doc]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = _loads(line, path, lineno)
            if not isinstance(doc, dict):
                raise IclEvalError(f"{path}:{lineno}: expected a JSON object per line, got {type(doc).__name__}")
            yield doc


def read_json(path: Path) -> Iterator[Doc]:
    with open_text(path) as f:
        docs = _loads(f.read(), path)
    if isinstance(docs, dict) and len(docs) == 1 and isinstance(next(iter(docs.values())), list):
        docs = next(iter(docs.values()))  # {"data": [...]} wrappers are common
    if not isinstance(docs, list):
        raise IclEvalError(f"{path}: expected a JSON list of objects")
    yield from docs


def read_parquet(path: Path, src: DataSource) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    yield from pq.read_table(path).to_pylist()


def _lines(path: Path) -> list[str]:
    with open_text(path) as f:
        return [line.rstrip("\r\n") for line in f]


def read_tsv(path: Path, src: DataSource) -> Iterator[Doc]:
    """Tab-separated with CSV quoting (quoted cells may hold tabs and doubled quotes); `columns` names the cells."""
    if not src.columns:
        raise IclEvalError(f"{path}: a tsv source needs data.columns naming its columns, e.g. columns: [question, answers]")
    with open_text(path) as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row:
                continue
            if len(row) < len(src.columns):
                raise IclEvalError(f"{path}:{lineno}: {len(row)} tab-separated cells, but data.columns names {len(src.columns)}")
            yield dict(zip(src.columns, row))


def read_csv(path: Path, src: DataSource) -> Iterator[Doc]:
    """Comma-separated with a header row naming the fields (StoryCloze's release)."""
    with open_text(path) as f:
        yield from (dict(row) for row in csv.DictReader(f))


def read_records(path: Path, src: DataSource) -> Iterator[Doc]:
    """A record is `lines_per_record` consecutive lines (HellaSwag's text release); `columns` names them."""
    lines = _lines(path)
    while lines and not lines[-1].strip():  # blank lines at the end of a file are not a record
        lines.pop()
    n = src.lines_per_record
    names = src.columns or tuple(f"line{i}" for i in range(n))
    if len(names) != n:
        raise IclEvalError(f"{path}: data.columns names {len(names)} lines but lines_per_record is {n}")
    if len(lines) % n:
        raise IclEvalError(f"{path}: {len(lines)} lines is not a multiple of lines_per_record {n}; the file is cut short or the setting is wrong")
    for start in range(0, len(lines), n):
        yield dict(zip(names, lines[start : start + n]))


_BRACES = re.compile(r"^(.*)\{([^{}]+)\}(.*)$")


def parallel_files(local: str) -> list[tuple[str, str]]:
    """(column, path) for `prefix.{en,fr}`-style names of line-aligned files."""
    m = _BRACES.match(local)
    if not m:
        return []
    head, names, tail = m.groups()
    return [(name.strip(), f"{head}{name.strip()}{tail}") for name in names.split(",")]


def read_parallel(path: Path, src: DataSource) -> Iterator[Doc]:
    files = parallel_files(str(path))
    if len(files) < 2:
        raise IclEvalError(f"{path}: a parallel source names its line-aligned files with braces, e.g. local: wmt/en-fr/newstest2014.{{en,fr}}")
    columns = {name: _lines(Path(p)) for name, p in files}
    lengths = {name: len(lines) for name, lines in columns.items()}
    if len(set(lengths.values())) != 1:
        raise IclEvalError(f"{path}: the parallel files are not line-aligned (line counts {lengths}); use the matching pair of files")
    for row in zip(*columns.values()):
        yield dict(zip(columns, row))


def read_text(path: Path, src: DataSource) -> Iterator[Doc]:
    """The whole file is one document, {"text": ...}: a corpus scored as one text (Penn Treebank's test set for
    rolling perplexity). Line ends are kept as they are: they are part of what is scored."""
    with open_text(path) as f:
        yield {"text": f.read()}


def _json_reader(reader: Callable[[Path], Iterator[Doc]]) -> Callable[[Path, DataSource], Iterator[Doc]]:
    return lambda path, src: reader(path)


# Format name -> reader. A new local format is one function here.
READERS: dict[str, Callable[[Path, DataSource], Iterator[Doc]]] = {
    "jsonl": _json_reader(read_jsonl), "json": _json_reader(read_json), "parquet": read_parquet,
    "tsv": read_tsv, "csv": read_csv, "records": read_records, "parallel": read_parallel, "text": read_text,
    **{name: _json_reader(fn) for name, fn in FORMATS.items()},  # release-specific layouts (icl_eval/formats.py)
    **{name: _json_reader(fn) for name, fn in RC_FORMATS.items()},  # reading comprehension (icl_eval/formats_rc.py)
}


def infer_format(path: Path) -> str:
    if parallel_files(path.name):
        return "parallel"
    suffix = Path(_strip_compression(path.name)).suffix.lstrip(".")
    return {"txt": "text", "tsv": "tsv", "csv": "csv", "jsonl": "jsonl", "json": "json", "parquet": "parquet"}.get(suffix, suffix)


def _add_line_fields(docs: list[Doc], src: DataSource, root: Path, path: Path) -> None:
    for name, rel in src.line_fields.items():
        extra = under_root(rel, root, f"data.line_fields.{name}")
        try:
            values = [v for v in _lines(extra) if v.strip()]
        except OSError as e:
            raise IclEvalError(f"{extra}: cannot read data.line_fields.{name} ({e.strerror}); it must sit beside {path}") from None
        if len(values) != len(docs):
            raise IclEvalError(f"{extra}: {len(values)} lines for data.line_fields.{name}, but {path} holds {len(docs)} examples")
        for doc, value in zip(docs, values):
            doc[name] = value


def _parse_literals(raw: Doc, i: int, names: tuple[str, ...], path: str) -> Doc:
    """The record with its literal fields (data.literal_fields) parsed, safely: literals only, never code."""
    doc = dict(raw)
    for name in names:
        if name not in doc:
            raise IclEvalError(f"{path}: data.literal_fields names '{name}', but example {i} has only {', '.join(sorted(doc))}")
        if isinstance(doc[name], str):
            try:
                doc[name] = ast.literal_eval(doc[name])
            except (ValueError, SyntaxError):
                raise IclEvalError(f"{path}: example {i}, field '{name}': not a Python literal ({doc[name][:60]!r})") from None
    return doc


class MappedDocs(Sequence):
    """Each document as {field: expression over the raw record} (a task's data.fields or hub_fields; None:
    the record's own fields), mapped when first read: a --limit run of a 10,000-example task maps the examples
    it renders, not all of them (mapping all of HellaSwag's was half a second of start-up). The `literals`
    fields are parsed then too (data.literal_fields: TriviaQA's 20k alias lists took 0.4 s). A record that
    does not map raises when it is read, naming its index. Pickles and compares as the plain list.

    Besides the record's fields, an expression may call the answer-choosing functions of icl_eval.answers
    (`canonical_alias(answers)`, `first_clean_answer(answers)`); a record field of the same name wins."""

    def __init__(self, docs: list[Doc], mapping: dict[str, str] | None, where: str, literals: tuple[str, ...] = (), source: str = ""):
        from icl_eval.prompts import compile_expression

        self._raw, self._where, self._literals, self._source = docs, where, literals, source
        mapping = mapping or {}
        self._compiled = {name: compile_expression(expr, f"{where}.{name}") for name, expr in mapping.items()}
        # A mapping that is just a field name (most of them) is a dict lookup: rendering a Jinja expression per
        # record was most of a large task's load time (TriviaQA: 20k records x 3 fields).
        self._plain = {name: expr.strip() for name, expr in mapping.items() if expr.strip().isidentifier()}
        self._mapped: dict[int, Doc] = {}
        if docs:
            self[0]  # a mapping that fits no record (a mistyped field name) fails here, at load

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]  # negative indices, and IndexError past the end (which ends iteration)
        if i not in self._mapped:
            self._mapped[i] = self._map(i, self._raw[i])
        return self._mapped[i]

    def _map(self, i: int, raw: Doc) -> Doc:
        from icl_eval.answers import FIELD_FUNCTIONS
        from icl_eval.prompts import call_expression

        if self._literals:
            raw = _parse_literals(raw, i, self._literals, self._source)
        if not self._compiled:
            return raw
        doc = {}
        for name, fn in self._compiled.items():
            field = self._plain.get(name)
            if field is not None and field in raw:
                doc[name] = raw[field]
                continue
            try:
                doc[name] = call_expression(fn, **{**FIELD_FUNCTIONS, **raw}, doc=raw)
            except Exception as e:  # a missing field or a Python error inside the expression
                raise IclEvalError(f"{self._where}.{name}: example {i}: {type(e).__name__}: {e}; the record's fields are: {', '.join(sorted(raw))}") from None
        return doc

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, MappedDocs)) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (list, (list(self),))


def under_root(rel: str, root: Path, what: str) -> Path:
    """A data path from a task file. Relative: under the data root, also after resolving symlinks, so neither
    `../../home/me/.ssh/id_rsa` nor a link in the data folder reads a file elsewhere into prompts and logs.
    Absolute: allowed, as the task file's explicit choice (every run names the file it read)."""
    if Path(rel).is_absolute():
        return Path(rel)
    path, base = root / rel, root.resolve()
    for file in [Path(p) for _, p in parallel_files(str(path))] or [path]:
        real = file.resolve()
        if not real.is_relative_to(base):
            raise IclEvalError(f"{what}: '{rel}' resolves to {real}, outside the data root {root}; relative data paths must stay under --data-dir (write an absolute path in the task file to read elsewhere on purpose)")
    return path


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeDecodeError, zlib.error)  # zlib.error: a corrupt .gz
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def read_local(src: DataSource, root: Path) -> Sequence[Doc]:
    path = under_root(src.local, root, "data.local")
    fmt = src.format or infer_format(path)
    reader = READERS.get(fmt)
    if reader is None:
        raise IclEvalError(f"{path}: no reader for format '{fmt}'; set data.format to one of {', '.join(sorted(READERS))}")
    try:
        docs = list(reader(path, src))
    except _decompress_errors() as e:
        raise IclEvalError(f"{path}: cannot read data file ({e}); re-download it") from None
    _add_line_fields(docs, src, root, path)
    if not (src.fields or src.literal_fields):
        return docs
    return MappedDocs(docs, src.fields, f"{path} (data.fields)", src.literal_fields, str(path))


def read_hub(src: DataSource) -> Sequence[Doc]:
    import datasets

    ds = datasets.load_dataset(src.hub, src.hub_name, split=src.hub_split)
    rows = [dict(row) for row in ds]
    if src.format in HUB_LAYOUTS:  # a row per dialogue: one document per question, as the local reader gives
        rows = HUB_LAYOUTS[src.format](rows, f"hub:{src.hub}")
    return MappedDocs(rows, src.hub_fields, f"hub:{src.hub} (data.hub_fields)") if src.hub_fields else rows


def _local_exists(path: Path) -> bool:
    files = parallel_files(str(path))
    return all(Path(p).exists() for _, p in files) if files else path.exists()


def _local_path(src: DataSource, root: Path | None) -> Path | None:
    if not src.local:
        return None
    if Path(src.local).is_absolute():
        return Path(src.local)
    return under_root(src.local, root, "data.local") if root else None


def load_source(src: DataSource, data_dir: str | None, seed: int, what: str) -> tuple[Sequence[Doc], str]:
    """Documents and a description of where they came from. Local first: it is explicit and offline."""
    root = data_root(data_dir)
    local = _local_path(src, root)
    if local is not None and _local_exists(local):
        docs = read_local(src, root or Path("."))
        if not docs:
            raise IclEvalError(f"{local}: the data file holds no examples; re-download it")
        return docs, str(local)
    hub_error = ""
    if src.hub and hub_reachable():
        try:
            return read_hub(src), f"hub:{src.hub}" + (f"/{src.hub_name}" if src.hub_name else "") + f":{src.hub_split}"
        except Exception as e:  # the hub raises many types (connection, missing config, auth)
            hub_error = f" (hub said: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    if src.generator:
        from icl_eval.generators import generate

        return generate(src.generator, seed, src.generator_args, root), f"generated:{src.generator}"
    tried = []
    if src.hub:
        tried.append(f"hub dataset '{src.hub}'" + (f" config '{src.hub_name}'" if src.hub_name else "") + hub_error)
    if src.local:
        tried.append(f"local file {local}" if local else f"local file <data-dir>/{src.local} (no --data-dir or ICL_EVAL_DATA_DIR given)")
    raise IclEvalError(f"no data for {what}: tried {' and '.join(tried)}; download it there or pass --data-dir DIR holding {src.local or 'the files'}")


def load_docs(task: TaskConfig, data_dir: str | None, seed: int = 1234) -> Sequence[Doc]:
    """The evaluation split of a task; doc_id is the index in this list."""
    return load_source(task.data, data_dir, seed, f"task '{task.name}' ({task.path})")[0]
