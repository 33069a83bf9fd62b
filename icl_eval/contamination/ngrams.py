"""The hashing kernel: 64-bit hashes of every word n-gram in a batch of documents, in numpy.

A batch is its documents' normalised code points joined by a separator byte, with every run of spaces collapsed to
one, so an n-gram is a contiguous span and its hash comes straight from a prefix sum:
    H[k] = sum_{j<k} c[j] * P^j  (mod 2^64),   hash(s, e) = (H[e] - H[s]) * P^-s.
That is a handful of vectorised passes over the text, with no Python loop over words. Hashes only nominate
candidates: every hit is confirmed by comparing the text itself, so a collision can never mark an example dirty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icl_eval.contamination.normalise import DOC_SEP, SEP, SPACE, WORD, nfkc, tables

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so it has an inverse mod 2^64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_powers = np.ones(1, dtype=np.uint64)
_inv_powers = np.ones(1, dtype=np.uint64)


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k for k < n, grown by doubling and kept for the process: batches reuse them."""
    global _powers, _inv_powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers))
        with np.errstate(over="ignore"):
            _powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, _P, dtype=np.uint64)]), dtype=np.uint64)
            _inv_powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, _P_INV, dtype=np.uint64)]), dtype=np.uint64)
    return _powers[:n], _inv_powers[:n]


@dataclass
class Batch:
    """Normalised documents as code points: word spans [starts, ends) into `data`, and each word's document."""

    data: np.ndarray  # uint32 code points; words one space apart, documents apart by DOC_SEP
    starts: np.ndarray  # int64 per word
    ends: np.ndarray
    doc: np.ndarray  # int64 per word: index of its document in the batch
    n_docs: int

    def span(self, i: int, length: int) -> bytes:
        """The normalised n-gram of `length` words from word i, as comparable bytes (UTF-32)."""
        return self.data[self.starts[i]:self.ends[i + length - 1]].tobytes()

    def text(self, lo: int, hi: int) -> str:
        """Words lo..hi-1 as normalised text."""
        return self.data[self.starts[lo]:self.ends[hi - 1]].tobytes().decode("utf-32-le") if hi > lo else ""

    def words(self, doc: int) -> list[str]:
        lo, hi = np.searchsorted(self.doc, [doc, doc + 1])
        return [self.data[s:e].tobytes().decode("utf-32-le") for s, e in zip(self.starts[lo:hi], self.ends[lo:hi])]


def normalise_batch(texts: list[str]) -> Batch:
    """Normalise and concatenate documents; a document's words never join another's."""
    classes, lower = tables()
    joined = DOC_SEP.join(nfkc(t.replace(DOC_SEP, " ") if DOC_SEP in t else t) for t in texts)
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    cls = classes[cps]
    keep = cls.astype(bool)  # DROP is 0
    cps, cls = cps[keep], cls[keep]
    is_word = cls == WORD
    # Collapse whitespace: keep a space only right after a word character, so words are one space apart.
    keep = is_word | (cls == SEP)
    keep[1:] |= (cls[1:] == SPACE) & is_word[:-1]
    data = lower[cps[keep]]
    cls = cls[keep]
    data[cls == SPACE] = 32
    is_word = (cls == WORD).view(np.int8)
    edges = np.diff(is_word, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    doc = np.cumsum(cls == SEP)[starts] if len(starts) else np.zeros(0, dtype=np.int64)
    return Batch(data, starts, ends, doc.astype(np.int64), len(texts))


def _mix(h: np.ndarray) -> np.ndarray:
    # The polynomial's low bits are weak; a multiply-xorshift spreads every input bit over the word.
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(31))
        h = h * _MIX
        return h ^ (h >> np.uint64(29))


def prefix_hashes(batch: Batch) -> np.ndarray:
    powers, _ = _power_tables(len(batch.data))
    prefix = np.zeros(len(batch.data) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(batch.data.astype(np.uint64) * powers, out=prefix[1:])
    return prefix


def gram_hashes(batch: Batch, length: int, prefix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first word index, hash) of every n-gram of `length` words that lies inside one document."""
    n_words = len(batch.starts)
    if n_words < length:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    if prefix is None:
        prefix = prefix_hashes(batch)
    _, inv_powers = _power_tables(len(batch.data))
    first = np.arange(n_words - length + 1)
    inside = batch.doc[: n_words - length + 1] == batch.doc[length - 1:]
    first = first[inside]
    s = batch.starts[first]
    e = batch.ends[first + length - 1]
    with np.errstate(over="ignore"):
        h = (prefix[e] - prefix[s]) * inv_powers[s]
    return first, _mix(h)


def hash_text(words: list[str]) -> int:
    """The kernel's hash of one n-gram given as normalised words (for tests and one-off lookups)."""
    data = np.frombuffer(" ".join(words).encode("utf-32-le"), dtype=np.uint32)
    powers, _ = _power_tables(len(data))
    with np.errstate(over="ignore"):
        h = np.array([np.sum(data.astype(np.uint64) * powers, dtype=np.uint64)], dtype=np.uint64)
    return int(_mix(h)[0])
