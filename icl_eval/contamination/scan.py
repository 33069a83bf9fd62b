"""The scan kernel: one corpus shard against the gram table, emitting only confirmed matches.

Both engines run exactly this function per shard and merge the results in shard order, so `local` and `dask`
give identical answers. A shard's result is plain JSON-able data (it travels between processes and into
the cache).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from icl_eval.allocator import roomy_heap
from icl_eval.contamination.corpus import DocBatch, Problems, Shard, read_batches
from icl_eval.contamination.index import GramTable
from icl_eval.contamination.ngrams import Batch, all_gram_hashes, normalise_batch, prefix_hashes
from icl_eval.errors import IclEvalError

SNIPPET_CONTEXT_WORDS = 6
SNIPPETS_PER_GRAM = 3


@dataclass(frozen=True)
class ScanOptions:
    text_field: str = "text"
    boilerplate: int = 10  # a gram found in more documents than this is ignored
    batch_chars: int = 1 << 19  # documents are hashed together in batches of about this much text (cache-sized)


class _ShardHits:
    """Per gram: the confirmed documents (at most boilerplate + 1, which already proves it boilerplate)."""

    def __init__(self, n_grams: int, cap: int) -> None:
        self.cap = cap
        self.full = np.zeros(n_grams, dtype=bool)
        self.hits: dict[int, list] = {}  # gid -> [[doc id, snippet or None], ...]

    def add(self, gid: int, doc_id: str, snippet_of) -> None:
        refs = self.hits.setdefault(gid, [])
        refs.append([doc_id, snippet_of() if len(refs) < SNIPPETS_PER_GRAM else None])
        if len(refs) >= self.cap:
            self.full[gid] = True


def _snippet(batch: Batch, doc: int, w: int, length: int) -> str:
    lo, hi = batch.doc_words(doc)
    a, b = max(lo, w - SNIPPET_CONTEXT_WORDS), min(hi, w + length + SNIPPET_CONTEXT_WORDS)
    text = f"{batch.text(a, w)} [{batch.text(w, w + length)}] {batch.text(w + length, b)}".strip()
    return ("… " if a > lo else "") + text + (" …" if b < hi else "")


class _Snippets:
    """One snippet serves the overlapping n-grams of one passage: a long copy yields a few, not one per n-gram."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, str]] = {}

    def get(self, batch: Batch, doc: int, w: int, length: int) -> str:
        if doc in self.last and abs(self.last[doc][0] - w) <= SNIPPET_CONTEXT_WORDS:
            return self.last[doc][1]
        text = _snippet(batch, doc, w, length)
        self.last[doc] = (w, text)
        return text


def _scan_batch(table: GramTable, docs_in: DocBatch, hits: _ShardHits) -> None:
    batch = normalise_batch(docs_in.texts)
    snippets = _Snippets()
    prefix = prefix_hashes(batch)
    for length in table.lengths:
        h = all_gram_hashes(prefix, length)
        first = table.candidates(h)
        h = h[first]
        lo = np.searchsorted(table.hashes, h, side="left")
        hi = np.searchsorted(table.hashes, h, side="right")
        found = hi > lo
        first, lo, hi = first[found], lo[found], hi[found]
        inside = batch.docs_of(first) == batch.docs_of(first + length - 1)  # not across two documents
        first, lo, hi = first[inside], lo[inside], hi[inside]
        # Two grams can share a hash: take every (position, gram) pair, usually one per position.
        pos, gid = [first], [table.gram_ids[lo]]
        for extra in range(1, int((hi - lo).max(initial=1))):
            more = hi - lo > extra
            pos.append(first[more])
            gid.append(table.gram_ids[lo[more] + extra])
        pos, gid = np.concatenate(pos), np.concatenate(gid)
        live = ~hits.full[gid]
        pos, gid = pos[live], gid[live]
        if not len(pos):
            continue
        # One confirmation per (gram, document): the first occurrence in the document.
        docs = batch.docs_of(pos)
        _, first_of_pair = np.unique(gid * batch.n_docs + docs, return_index=True)
        pairs = np.sort(first_of_pair)
        pos, gid, docs = pos[pairs], gid[pairs], docs[pairs]
        for w, g, d, key in zip(pos.tolist(), gid.tolist(), docs.tolist(), batch.keys(pos, length)):
            if hits.full[g] or key != table.texts[g]:
                continue  # enough documents already, or a hash collision: the text decides
            hits.add(g, docs_in.doc_id(d), lambda: snippets.get(batch, d, w, length))


def _readable(batches: Iterator[DocBatch], shard: Shard, problems: Problems) -> Iterator[DocBatch]:
    """The batches until reading fails; a file that cannot be opened or read further is counted, not fatal.

    Only reading is guarded: an error in the scan itself is a bug and still stops the command.
    """
    while True:
        try:
            docs = next(batches)
        except StopIteration:
            return
        except IclEvalError:
            raise  # a setting the user must change (e.g. a parquet file without the text column)
        except Exception as e:  # OSError (permission, I/O), pyarrow's errors for a damaged parquet file, ...
            problems.add("unreadable_files", shard.url, f"cannot read ({type(e).__name__}: {str(e)[:200]}); the rest of the file is skipped")
            return
        yield docs


def scan_shard(table: GramTable, shard: Shard, options: ScanOptions) -> dict:
    """Scan one corpus file; returns {shard, docs, chars, seconds, hits: {gid: refs}, problems}."""
    start, cpu = time.perf_counter(), time.process_time()
    problems = Problems()
    hits = _ShardHits(len(table.texts), options.boilerplate + 1)
    n_docs = n_chars = 0
    with roomy_heap():
        for docs in _readable(read_batches(shard, options.text_field, problems, options.batch_chars), shard, problems):
            _scan_batch(table, docs, hits)
            n_docs, n_chars = n_docs + len(docs.texts), n_chars + sum(map(len, docs.texts))
    return {
        "shard": shard.url, "docs": n_docs, "chars": n_chars, "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "hits": {str(g): refs for g, refs in sorted(hits.hits.items())},
        "problems": {"counts": problems.counts, "examples": problems.examples},
    }


def merge(results: list[dict], boilerplate: int) -> tuple[dict[int, list], Problems, dict]:
    """Shard results, in shard order, into per-gram document lists (capped at boilerplate + 1), problems, totals."""
    cap = boilerplate + 1
    refs: dict[int, list] = {}
    problems = Problems()
    totals = {"files": len(results), "docs": 0, "chars": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    for r in results:
        for g, rs in r["hits"].items():
            have = refs.setdefault(int(g), [])
            have.extend(rs[: cap - len(have)])
        problems.merge(Problems(dict(r["problems"]["counts"]), list(r["problems"]["examples"])))
        for key in ("docs", "chars", "seconds", "cpu_seconds"):
            totals[key] += r[key]
    return refs, problems, totals
