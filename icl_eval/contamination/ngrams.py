"""The hashing kernel: 64-bit hashes of every word n-gram in a batch of documents, in numpy.

A batch is its documents joined by a separator and mapped through the normalisation table, punctuation removed:
a stream of word characters, spaces and document separators. Hashing takes two prefix sums, one per character
and one per word, and no Python loop over either:
    per character (32-bit):  C[k] = sum_{j<k} c[j] * P^j,          word hash w = (C[end] - C[start]) * P^-start
    per word (64-bit):       W[k] = sum_{i<k} mix(w[i]) * Q^i,     n-gram hash = (W[i+n] - W[i]) * Q^-i
Hashes only nominate candidates: every hit is confirmed by comparing the n-gram itself (`Batch.keys`), so a
collision can never mark an example dirty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from icl_eval.contamination.normalise import DOC_SEP, DROP, NEEDS_NFKC, SEP, SPACE, fast_table, nfkc, table

_P = 0x9E3779B1  # odd: invertible mod 2^32 and 2^64
_Q = 0x9E3779B97F4A7C15
_MIX = np.uint64(0xBF58476D1CE4E5B9)


class _Powers:
    """x^k and x^-k for k < n in one unsigned dtype, grown by doubling and kept for the process."""

    def __init__(self, x: int, dtype: type) -> None:
        self.x, self.dtype = x, dtype
        self.up = self.down = np.ones(1, dtype=dtype)

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up))
            bits = np.dtype(self.dtype).itemsize * 8
            with np.errstate(over="ignore"):
                for name, x in (("up", self.x), ("down", pow(self.x, -1, 2**bits))):
                    steps = np.full(size, x, dtype=self.dtype)
                    steps[0] = 1
                    setattr(self, name, np.cumprod(steps, dtype=self.dtype))
        return self.up[:n], self.down[:n]


_char_powers = _Powers(_P, np.uint32)
_word_powers = _Powers(_Q, np.uint64)


@dataclass
class Batch:
    """Normalised documents: one stream of code units, and each word's span in it."""

    units: np.ndarray  # uint16: word characters, SPACE between words, SEP between documents
    starts: np.ndarray  # int64 per word, into units
    ends: np.ndarray
    seps: np.ndarray  # int64: where each SEP is
    n_docs: int
    _doc: np.ndarray | None = field(default=None, repr=False)

    @property
    def doc(self) -> np.ndarray:
        """Per word, the index of its document in the batch (non-decreasing)."""
        if self._doc is None:
            self._doc = self.docs_of(np.arange(len(self.starts)))
        return self._doc

    def docs_of(self, words: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.seps, self.starts[words])

    def keys(self, first: np.ndarray, length: int) -> list[str]:
        """The n-gram of `length` words at each word in `first`, exactly: its normalised words joined by spaces.

        Built together, so a scan confirms a batch's hits at once.
        """
        if not len(first):
            return []
        words = (first[:, None] + np.arange(length)).ravel()
        sizes = self.ends[words] - self.starts[words] + 1  # each word and one space after it
        before = np.cumsum(sizes) - sizes
        at = np.repeat(self.starts[words] - before, sizes) + np.arange(int(before[-1] + sizes[-1]))
        chars = np.take(self.units, at, mode="clip")  # "clip": the batch's last word has nothing after it
        chars[before + sizes - 1] = SPACE
        # Units are code points (the table maps no character to a surrogate), so string offsets are unit offsets.
        text = chars.astype("<u2").tobytes().decode("utf-16-le")
        bounds = before[::length].tolist() + [len(chars)]
        return [text[a:b - 1] for a, b in zip(bounds, bounds[1:])]

    def text(self, lo: int, hi: int) -> str:
        """Words lo..hi-1 (of one document) as normalised text."""
        if hi <= lo:
            return ""
        span = self.units[self.starts[lo]:self.ends[hi - 1]]
        return " ".join(span.astype("<u2").tobytes().decode("utf-16-le").split())

    def doc_words(self, doc: int) -> tuple[int, int]:
        """The range of word indices of one document."""
        bounds = np.searchsorted(self.starts, [self.seps[doc - 1] if doc else 0, self.seps[doc] if doc < len(self.seps) else len(self.units)])
        return int(bounds[0]), int(bounds[1])

    def words(self, doc: int) -> list[str]:
        lo, hi = self.doc_words(doc)
        return self.text(lo, hi).split(" ") if hi > lo else []


def _units(text: str, lookup: np.ndarray) -> np.ndarray:
    # "clip" never clips (a code unit is below 2^16, the table's length); it only skips the bounds check.
    return np.take(lookup, np.frombuffer(text.encode("utf-16-le"), dtype=np.uint16), mode="clip")


def _doc_starts(units: np.ndarray, texts: list[str], n_chars: int) -> np.ndarray | None:
    """Where each document starts in `units`; None when that cannot be told (a document holds the separator).

    Without surrogate pairs the texts' lengths give it (a separator inside a document is caught later, when
    the separators are counted); with them, the separators are found.
    """
    if len(units) == n_chars:  # no surrogate pair: one unit per character, and the lengths say it all
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
        return np.cumsum(sizes) - sizes
    seps = np.flatnonzero(units == SEP)
    return np.concatenate([[0], seps + 1]) if len(seps) == len(texts) - 1 else None


def _renormalise(units: np.ndarray, needs: np.ndarray, texts: list[str], n_chars: int) -> np.ndarray | None:
    """Put the documents that hold a NEEDS_NFKC character (at `needs`) through NFKC and the plain table.

    A document whose NFKC form is no longer is rewritten in place, padded with DROP (the caller removes every
    DROP); only longer ones cost a copy of the batch. None when the documents cannot be told apart.
    """
    starts = _doc_starts(units, texts, n_chars)
    if starts is None:
        return None
    ends = np.append(starts[1:] - 1, len(units))
    pieces, done = [], 0
    for d in np.unique(np.searchsorted(starts, needs, side="right") - 1).tolist():
        a, b = int(starts[d]), int(ends[d])
        new = _units(nfkc(texts[d]), table())
        if len(new) <= b - a:
            units[a:a + len(new)] = new
            units[a + len(new):b] = DROP
        else:
            pieces += [units[done:a], new]
            done = b
    if not pieces:
        return units
    pieces.append(units[done:])
    return np.concatenate(pieces)


def _with_separators_spaced(texts: list[str]) -> Batch:
    """A document holds the separator character itself: there it counts as a space."""
    return normalise_batch([t.replace(DOC_SEP, " ") for t in texts])


def normalise_batch(texts: list[str]) -> Batch:
    """Normalise and concatenate documents; a document's words never join another's."""
    joined = DOC_SEP.join(texts)
    units = _units(joined, fast_table())
    if not joined.isascii() and len(needs := np.flatnonzero(units == NEEDS_NFKC)):
        units = _renormalise(units, needs, texts, len(joined))
        if units is None:
            return _with_separators_spaced(texts)
    units = units[units != DROP]  # punctuation inside a word joins its halves: "don't" -> "dont"
    seps = np.flatnonzero(units == SEP)
    if len(seps) != len(texts) - 1:
        return _with_separators_spaced(texts)
    is_word = np.zeros(len(units) + 2, dtype=bool)
    np.greater(units, SPACE, out=is_word[1:-1])
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # alternately a word's start and its end
    return Batch(units, edges[0::2], edges[1::2], seps, len(texts))


def word_hashes(batch: Batch) -> np.ndarray:
    """uint64 per word, from its characters only."""
    n = len(batch.units)
    powers, inv_powers = _char_powers(n)
    prefix = np.empty(n + 1, dtype=np.uint32)  # every entry but the first is written below
    prefix[0] = 0
    with np.errstate(over="ignore"):
        np.multiply(batch.units, powers, out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        h = ((prefix[batch.ends] - prefix[batch.starts]) * inv_powers[batch.starts]).astype(np.uint64)
        # The polynomial's low bits are weak; a multiply-xorshift spreads the word's hash over 64 bits.
        h *= _MIX
        h ^= h >> np.uint64(29)
    return h


def prefix_hashes(batch: Batch) -> np.ndarray:
    """W[k] = sum_{i<k} word_hash[i] * Q^i, the per-word prefix every n-gram hash is read from."""
    h = word_hashes(batch)
    powers, _ = _word_powers(len(h))
    prefix = np.empty(len(h) + 1, dtype=np.uint64)
    prefix[0] = 0
    with np.errstate(over="ignore"):
        np.multiply(h, powers, out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
    return prefix


def all_gram_hashes(prefix: np.ndarray, length: int) -> np.ndarray:
    """The hash of the n-gram of `length` words at every word position, documents ignored (see Batch.docs_of)."""
    m = len(prefix) - length
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    _, inv_powers = _word_powers(m)
    with np.errstate(over="ignore"):
        return (prefix[length:] - prefix[:m]) * inv_powers


def gram_hashes(batch: Batch, length: int, prefix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first word index, hash) of every n-gram of `length` words that lies inside one document."""
    h = all_gram_hashes(prefix_hashes(batch) if prefix is None else prefix, length)
    doc = batch.doc
    first = np.flatnonzero(doc[: len(h)] == doc[length - 1:])
    return first, h[first]


def hash_text(words: list[str]) -> int:
    """The kernel's hash of one n-gram given as normalised words (for tests and one-off lookups)."""
    batch = normalise_batch([" ".join(words)])
    return int(gram_hashes(batch, len(batch.starts))[1][0])
