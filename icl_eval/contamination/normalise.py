"""The paper's word normalisation (GPT-3 Appendix C), as one lookup table over UTF-16 code units.

Lowercase, punctuation removed, split on whitespace. Concretely: NFKC first (composed and decomposed accents,
full-width letters and ligatures agree), then each character goes through one table: letters and digits
(str.isalnum) become their lowercase form, whitespace becomes a separator, and everything else (punctuation,
symbols, controls, underscore) is removed, so "don't" is one word, "dont". The table covers the Basic
Multilingual Plane (128 KB, it stays in cache); characters beyond it (emoji and rare scripts, which arrive as
surrogate pairs) count as punctuation.
Bump NORMALISATION_VERSION whenever the output of `normalise` can change: it keys the scan cache.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

NORMALISATION_VERSION = 2

# Document separator inside a batch: its own class, so n-grams never cross from one document into the next.
DOC_SEP = "\x00"
# Table values for non-word characters: surrogate code units, which no word character can map to.
DROP, SPACE, SEP = 0xD800, 0xD801, 0xD802
N_BMP = 0x10000


@functools.lru_cache(maxsize=1)
def table() -> np.ndarray:
    """uint16 per BMP code unit: the lowercase word character, or DROP / SPACE / SEP; built once per process."""
    chars = list(map(chr, range(N_BMP)))
    out = np.full(N_BMP, DROP, dtype=np.uint16)
    for cp, ch in enumerate(chars):
        if ch.isalnum() and not 0xD800 <= cp < 0xE000:
            low = ch.lower()
            out[cp] = ord(low) if len(low) == 1 else cp  # the few one-to-many lowercasings keep their character
        elif ch.isspace():
            out[cp] = SPACE
    out[0] = SEP
    return out


def nfkc(text: str) -> str:
    if text.isascii():
        return text
    # NFKC maps the no-break space to a space; doing that first spares most web text the full normalisation.
    text = text.replace("\xa0", " ")
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def normalise(text: str) -> list[str]:
    """The words of `text` after normalisation, exactly as the scan kernel sees them."""
    from icl_eval.contamination.ngrams import normalise_batch  # the kernel is the one definition

    return normalise_batch([text]).words(0)
