"""The hashing kernel: 64-bit hashes of every word n-gram in a batch of documents, in numpy.

A batch is its documents joined by a separator, mapped through the normalisation table and reduced to word
characters only, with the last character of each word flagged. An n-gram is then a contiguous span of that
stream, and its hash comes straight from a prefix sum:
    H[k] = sum_{j<k} c[j] * P^j  (mod 2^64),   hash(s, e) = (H[e] - H[s]) * P^-s.
That is a handful of vectorised passes over the text, with no Python loop over words. Hashes only nominate
candidates: every hit is confirmed by comparing the n-gram itself (`Batch.key`), so a collision can never
mark an example dirty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from icl_eval.contamination.normalise import DOC_SEP, DROP, SEP, nfkc, table

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so it has an inverse mod 2^64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_WORD_END = np.uint64(1 << 16)  # added to a word's last character: "ab c" and "a bc" hash apart
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
    """Normalised documents: the word characters of all words back to back, and each word's span and document."""

    data: np.ndarray  # uint16 lowercase word characters, no separators
    starts: np.ndarray  # int64 per word, into data
    ends: np.ndarray
    doc: np.ndarray  # int64 per word: index of its document in the batch (non-decreasing)
    n_docs: int
    _bounds: np.ndarray | None = field(default=None, repr=False)

    def key(self, i: int, length: int) -> bytes:
        """The n-gram of `length` words from word i, exactly, as bytes: its word lengths, then its characters."""
        s, e = self.starts[i], self.ends[i + length - 1]
        ends = (self.ends[i:i + length] - s).astype("<i4")
        return np.int32(length).astype("<i4").tobytes() + ends.tobytes() + self.data[s:e].astype("<u2").tobytes()

    def text(self, lo: int, hi: int) -> str:
        """Words lo..hi-1 as normalised text."""
        if hi <= lo:
            return ""
        base = self.starts[lo]
        chars = np.insert(self.data[base:self.ends[hi - 1]], self.starts[lo + 1:hi] - base, np.uint16(32))
        return chars.astype("<u2").tobytes().decode("utf-16-le")

    def doc_words(self, doc: int) -> tuple[int, int]:
        """The range of word indices of one document."""
        if self._bounds is None:
            self._bounds = np.searchsorted(self.doc, np.arange(self.n_docs + 1))
        return int(self._bounds[doc]), int(self._bounds[doc + 1])

    def words(self, doc: int) -> list[str]:
        lo, hi = self.doc_words(doc)
        return self.text(lo, hi).split(" ") if hi > lo else []


def key_words(key: bytes) -> list[str]:
    """The words of an n-gram key (see Batch.key)."""
    length = int(np.frombuffer(key[:4], dtype="<i4")[0])
    ends = np.frombuffer(key[4:4 + 4 * length], dtype="<i4")
    chars = key[4 + 4 * length:]
    bounds = [0, *ends.tolist()]
    return [chars[2 * a:2 * b].decode("utf-16-le") for a, b in zip(bounds, bounds[1:])]


def key_length(key: bytes) -> int:
    return int(np.frombuffer(key[:4], dtype="<i4")[0])


def normalise_batch(texts: list[str]) -> Batch:
    """Normalise and concatenate documents; a document's words never join another's."""
    joined = DOC_SEP.join(nfkc(t.replace(DOC_SEP, " ") if DOC_SEP in t else t) for t in texts)
    units = table()[np.frombuffer(joined.encode("utf-16-le"), dtype=np.uint16)]
    units = units[units != DROP]  # punctuation inside a word joins its halves: "don't" -> "dont"
    is_word = (units - np.uint16(DROP)) > 2  # not DROP, SPACE or SEP (wraps below DROP)
    edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    word_starts = np.flatnonzero(edges == 1)
    word_ends = np.flatnonzero(edges == -1)
    # Documents are few next to words: count each one's words and repeat its index.
    first_words = np.searchsorted(word_starts, np.flatnonzero(units == SEP))
    per_doc = np.diff(first_words, prepend=0, append=len(word_starts))
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), per_doc)
    lengths = word_ends - word_starts
    ends = np.cumsum(lengths)
    return Batch(units[is_word], ends - lengths, ends, doc, len(texts))


def _mix(h: np.ndarray) -> np.ndarray:
    # The polynomial's low bits are weak; a multiply-xorshift spreads every input bit over the word.
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(31))
        h = h * _MIX
        return h ^ (h >> np.uint64(29))


def prefix_hashes(batch: Batch) -> np.ndarray:
    powers, _ = _power_tables(len(batch.data))
    prefix = np.zeros(len(batch.data) + 1, dtype=np.uint64)
    terms = prefix[1:]
    last = batch.ends - 1
    with np.errstate(over="ignore"):
        np.multiply(batch.data, powers, out=terms)  # widened to uint64 on the fly, no separate copy
        terms[last] += _WORD_END * powers[last]
        np.cumsum(terms, out=terms)
    return prefix


def gram_hashes(batch: Batch, length: int, prefix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first word index, hash) of every n-gram of `length` words that lies inside one document."""
    n_words = len(batch.starts)
    if n_words < length:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    if prefix is None:
        prefix = prefix_hashes(batch)
    _, inv_powers = _power_tables(len(batch.data))
    first = np.flatnonzero(batch.doc[: n_words - length + 1] == batch.doc[length - 1:])
    s = batch.starts[first]
    e = batch.ends[first + length - 1]
    with np.errstate(over="ignore"):
        h = (prefix[e] - prefix[s]) * inv_powers[s]
    return first, _mix(h)


def hash_text(words: list[str]) -> int:
    """The kernel's hash of one n-gram given as normalised words (for tests and one-off lookups)."""
    batch = normalise_batch([" ".join(words)])
    return int(gram_hashes(batch, len(batch.starts))[1][0])
