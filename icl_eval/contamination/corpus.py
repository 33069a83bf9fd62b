"""Streaming the training corpus: files from a path, glob or fsspec URL, read in blocks, never whole.

Formats by extension: .jsonl/.ndjson/.json (one JSON object per line, text in a configurable field),
.txt (one document per line) and .parquet (a text column), each optionally .gz or .zst.
Bad input is skipped and counted, never fatal: a bad JSON line, a line that is not UTF-8, a line without the text
field, a corrupt gzip member (reading resumes at the next member's header), damaged or cut-off zstd data, and a
file that cannot be read at all (`scan.scan_shard` counts it). Each problem keeps its file and line.
"""

from __future__ import annotations

import json
import zlib
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import IO

import numpy as np

from icl_eval.errors import IclEvalError

try:  # several times faster than json on long lines; the standard library is the fallback
    import orjson

    _loads = orjson.loads
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _JSONError = (ValueError,)

BLOCK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b\x08"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text", ".parquet": "parquet"}
MAX_PROBLEMS_KEPT = 50


@dataclass
class Problems:
    """Skipped input: counts by kind, and the first few with their file and line."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < MAX_PROBLEMS_KEPT:
            self.examples.append(f"{where}: {message}")

    def merge(self, other: "Problems") -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        self.examples.extend(other.examples[: MAX_PROBLEMS_KEPT - len(self.examples)])


def _split_name(path: str) -> tuple[str, str]:
    """(format, compression) from a file name."""
    name = path.rsplit("/", 1)[-1].lower()
    compression = ""
    for ext in (".gz", ".zst"):
        if name.endswith(ext):
            compression, name = ext[1:], name[: -len(ext)]
    dot = name.rfind(".")
    fmt = FORMATS.get(name[dot:] if dot >= 0 else "")
    if fmt is None:
        raise IclEvalError(
            f"{path}: unknown corpus file type; name files .jsonl, .txt or .parquet (optionally .gz or .zst)"
        )
    return fmt, compression


@dataclass(frozen=True)
class Shard:
    """One corpus file: the unit of work of both engines."""

    url: str  # as fsspec understands it (a local path, file://, s3://, ...)
    size: int
    fingerprint: str  # changes when the file does (fsspec's ukey: mtime/etag and size)


def expand(patterns: list[str]) -> list[Shard]:
    """Every file the paths, globs or URLs name, in a stable order, with fingerprints for the cache."""
    import fsspec

    shards = []
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        paths = fs.glob(path) if any(c in path for c in "*?[") else [path] if fs.exists(path) else []
        if not paths:
            raise IclEvalError(f"--corpus {pattern!r}: no files match; check the path or quote the glob")
        for path in sorted(paths):
            if fs.isdir(path):
                raise IclEvalError(f"--corpus {pattern!r}: {path} is a directory; give a glob such as '{path}/*.jsonl.gz'")
            _split_name(path)
            info = fs.info(path)
            url = path if "file" in fs.protocol else fs.unstrip_protocol(path)
            shards.append(Shard(url, int(info.get("size") or 0), f"{info.get('size')}-{fs.ukey(path)}"))
    return shards


class _Corrupt:
    def __init__(self, message: str) -> None:
        self.message = message


def _gunzip(raw: IO[bytes]) -> Iterator[bytes | _Corrupt]:
    """Decompress concatenated gzip members; a corrupt member yields _Corrupt and reading resumes at the next."""
    new = lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)  # noqa: E731
    d, pending, fed = new(), b"", False
    while True:
        if not pending:
            pending = raw.read(BLOCK)
            if not pending:
                break
        try:
            out = d.decompress(pending)
            fed = True
        except zlib.error as e:
            yield _Corrupt(f"corrupt gzip data ({e}); skipped to the next gzip member")
            d, fed = new(), False
            at = pending.find(_GZIP_MAGIC, 1)
            while at < 0:
                more = raw.read(BLOCK)
                if not more:
                    return
                pending = pending[-2:] + more
                at = pending.find(_GZIP_MAGIC, 1)
            pending = pending[at:]
            continue
        if out:
            yield out
        if d.eof:
            pending, d, fed = d.unused_data, new(), False
        else:
            pending = b""
    if fed:
        yield _Corrupt("gzip stream ends in the middle of a member (truncated file)")


def _unzstd(raw: IO[bytes]) -> Iterator[bytes | _Corrupt]:
    """Decompress concatenated zstd frames; damage loses the rest of the file, a cut-off frame is reported."""
    import zstandard

    new = lambda: zstandard.ZstdDecompressor().decompressobj()  # noqa: E731
    d, fed = new(), False
    while pending := raw.read(BLOCK):
        while pending:
            try:
                out = d.decompress(pending)
            except zstandard.ZstdError as e:
                yield _Corrupt(f"corrupt zstd data ({e}); the rest of the file is skipped")
                return
            fed = True
            if out:
                yield out
            if d.eof:  # a frame ended: the next one starts in what is left
                pending, d, fed = d.unused_data, new(), False
            else:
                pending = b""
    if fed:
        yield _Corrupt("zstd stream ends in the middle of a frame (truncated file)")


def _blocks(raw: IO[bytes], compression: str) -> Iterator[bytes | _Corrupt]:
    if compression == "gz":
        yield from _gunzip(raw)
        return
    if compression == "zst":
        yield from _unzstd(raw)
        return
    while block := raw.read(BLOCK):
        yield block


def _newlines(data: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))  # several times bytes.count's speed


def _line_blocks(raw: IO[bytes], compression: str, where: str, problems: Problems) -> Iterator[tuple[int, int, bytes]]:
    """(number of the first line, number of lines, whole lines joined by newlines) per block read.

    A line broken by corruption is dropped, not half-read.
    """
    tail = b""
    lineno = 0
    for block in _blocks(raw, compression):
        if isinstance(block, _Corrupt):
            problems.add("corrupt_compressed_data", f"{where}:{lineno + 1}", block.message)
            tail = b""
            continue
        cut = block.rfind(b"\n")
        if cut < 0:
            tail += block
            continue
        lines, tail = tail + block[:cut], block[cut + 1:]
        count = _newlines(lines) + 1
        yield lineno + 1, count, lines
        lineno += count
    if tail:  # the last line, with no newline after it
        yield lineno + 1, 1, tail


@dataclass
class DocBatch:
    """Documents read together, with where each came from; ids are spelled out only for the few that match."""

    url: str
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # line (or parquet row) number of each document
    row_sep: str = ":"
    ids: list[object] = field(default_factory=list)  # per document: the record's own `id` field, None without one

    def doc_id(self, i: int) -> str:
        """The corpus's own id of the document when it has one (a string or integer `id`), else file:line."""
        own = self.ids[i]
        if isinstance(own, str) or isinstance(own, int) and not isinstance(own, bool):
            return str(own)
        return f"{self.url}{self.row_sep}{self.lines[i]}"

    def extend(self, other: "DocBatch", start: int = 0, end: int | None = None) -> None:
        """Append other's documents [start, end)."""
        self.texts += other.texts[start:end]
        self.lines += other.lines[start:end]
        self.ids += other.ids[start:end]


def _jsonl_one_by_one(lines: bytes, first: int, out: DocBatch, text_field: str, problems: Problems) -> None:
    for lineno, line in enumerate(lines.split(b"\n"), first):
        if not line.strip():
            continue
        try:
            doc = _loads(line)
        except _JSONError as e:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as u:
                problems.add("invalid_utf8_lines", f"{out.url}:{lineno}", f"not valid UTF-8 (byte {u.start}: {u.reason}); line skipped")
                continue
            problems.add("bad_json_lines", f"{out.url}:{lineno}", f"not valid JSON ({str(e)[:80]})")
            continue
        text = doc.get(text_field) if isinstance(doc, dict) else None
        if not isinstance(text, str):
            problems.add("missing_text_field", f"{out.url}:{lineno}", f"no string field '{text_field}' (set --text-field)")
            continue
        out.texts.append(text)
        out.lines.append(lineno)
        out.ids.append(doc.get("id"))


def _jsonl_block(lines: bytes, first: int, n_lines: int, out: DocBatch, text_field: str, problems: Problems) -> None:
    """A block of JSON lines parsed as one array: one call into the parser instead of one per line.

    Anything unusual in the block (a bad or blank line, a missing field) sends it through the line-by-line
    reader, which reports each problem with its line.
    """
    try:
        docs = _loads(b"[" + lines.replace(b"\n", b",") + b"]")
        texts = [doc[text_field] for doc in docs]
    except (*_JSONError, KeyError, TypeError):
        texts = None
    if texts is None or len(texts) != n_lines or set(map(type, texts)) != {str}:
        _jsonl_one_by_one(lines, first, out, text_field, problems)
        return
    out.texts.extend(texts)
    out.lines.extend(range(first, first + n_lines))
    out.ids.extend(doc.get("id") for doc in docs)


def _text_block(lines: bytes, first: int, out: DocBatch, problems: Problems) -> None:
    for lineno, line in enumerate(lines.split(b"\n"), first):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:  # the valid words can still match: kept, with U+FFFD for the bad bytes
            problems.add("invalid_utf8_lines", f"{out.url}:{lineno}", f"not valid UTF-8 (byte {e.start}: {e.reason}); bad bytes replaced")
            text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            out.texts.append(text)
            out.lines.append(lineno)
            out.ids.append(None)


def _read_blocks(shard: Shard, text_field: str, problems: Problems) -> Iterator[DocBatch]:
    """The documents of one file, a block at a time."""
    import fsspec

    fmt, compression = _split_name(shard.url)
    with fsspec.open(shard.url, "rb") as raw:
        if fmt == "parquet":
            yield from _parquet(raw, shard.url, text_field, problems)
            return
        for first, n_lines, lines in _line_blocks(raw, compression, shard.url, problems):
            out = DocBatch(shard.url)
            if fmt == "text":
                _text_block(lines, first, out, problems)
            else:
                _jsonl_block(lines, first, n_lines, out, text_field, problems)
            yield out


def read_batches(shard: Shard, text_field: str, problems: Problems, batch_chars: int) -> Iterator[DocBatch]:
    """The documents of one file in batches, each closed by the first document that brings it to batch_chars.

    The document id is the record's own `id` field when it has one, else `file:line` (or `file#row` for parquet).
    """
    row_sep = "#" if _split_name(shard.url)[0] == "parquet" else ":"
    pending = DocBatch(shard.url, row_sep=row_sep)
    size = 0  # characters pending
    for block in _read_blocks(shard, text_field, problems):
        chars = list(accumulate(map(len, block.texts), initial=0))  # chars[i]: of the block's documents < i
        start = 0
        while (end := bisect_left(chars, batch_chars - size + chars[start], lo=start + 1)) < len(chars):
            pending.extend(block, start, end)
            yield pending
            pending, size, start = DocBatch(shard.url, row_sep=row_sep), 0, end
        pending.extend(block, start)
        size += chars[-1] - chars[start]
    if pending.texts:
        yield pending


def _parquet(raw: IO[bytes], url: str, text_field: str, problems: Problems) -> Iterator[DocBatch]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(raw)
    if text_field not in pf.schema_arrow.names:
        raise IclEvalError(f"{url}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)}); set --text-field")
    with_id = "id" in pf.schema_arrow.names and text_field != "id"
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=[text_field, "id"] if with_id else [text_field]):
        out = DocBatch(url, row_sep="#")
        ids = batch.column(1).to_pylist() if with_id else None
        for i, text in enumerate(batch.column(0).to_pylist()):
            row += 1
            if isinstance(text, str):
                out.texts.append(text)
                out.lines.append(row)
                out.ids.append(ids[i] if ids is not None else None)
            else:
                problems.add("missing_text_field", f"{url}#{row}", f"column '{text_field}' is not text here")
        yield out
