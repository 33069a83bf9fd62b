"""The paper's word normalisation (GPT-3 Appendix C), as lookup tables over Unicode code points.

Lowercase, punctuation removed, split on whitespace. Concretely: NFKC first (composed and decomposed accents,
full-width letters and ligatures agree), then every code point is classed by one table lookup: letters and
digits (str.isalnum) are word characters and are lowercased, whitespace separates words, everything else
(punctuation, symbols, controls, underscore) is removed, so "don't" is one word, "dont".
The tables are numpy arrays indexed by code point, so a whole batch of documents is classed in one pass.
Bump NORMALISATION_VERSION whenever the output of `normalise` can change: it keys the scan cache.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

NORMALISATION_VERSION = 1

# Document separator inside a batch: its own class, so n-grams never cross from one document into the next.
DOC_SEP = "\x00"
DROP, WORD, SPACE, SEP = 0, 1, 2, 3
N_CODEPOINTS = 0x110000


@functools.lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(class per code point, lowercase code point per code point); built once per process (~0.3 s)."""
    chars = list(map(chr, range(N_CODEPOINTS)))
    cls = np.fromiter(map(str.isalnum, chars), dtype=np.uint8, count=N_CODEPOINTS)  # WORD == 1
    for cp in range(0x3100):  # every Unicode space character lies below U+3100
        if chars[cp].isspace():
            cls[cp] = SPACE
    cls[0] = SEP
    lower = np.arange(N_CODEPOINTS, dtype=np.uint32)
    for cp in np.flatnonzero(cls == WORD).tolist():
        low = chars[cp].lower()
        if len(low) == 1:  # the few one-to-many lowercasings (e.g. U+0130) keep their code point
            lower[cp] = ord(low)
    return cls, lower


def nfkc(text: str) -> str:
    return text if text.isascii() or unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def normalise(text: str) -> list[str]:
    """The words of `text` after normalisation, exactly as the scan kernel sees them."""
    from icl_eval.contamination.ngrams import normalise_batch  # the kernel is the one definition

    return normalise_batch([text]).words(0)
