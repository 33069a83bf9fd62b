"""The paper's word normalisation (GPT-3 Appendix C), as one lookup table over UTF-16 code units.

Lowercase, punctuation removed, split on whitespace. Concretely: NFKC first (composed and decomposed accents,
full-width letters and ligatures agree), then each character goes through one table: letters and digits
(str.isalnum) become their lowercase form, whitespace becomes a separator, and everything else (punctuation,
symbols, controls, underscore) is removed, so "don't" is one word, "dont". The table covers the Basic
Multilingual Plane (128 KB, it stays in cache); characters beyond it (emoji and rare scripts, which arrive as
surrogate pairs) count as punctuation.

NFKC is the slow part, and on almost all text it changes nothing the table would not undo anyway ("…" becomes
"...", both removed; a no-break space becomes a space). So the scan reads text through `fast_table`, which marks
the few characters where NFKC can make a difference with NEEDS_NFKC, and only documents holding one of them
are normalised for real.
Bump NORMALISATION_VERSION whenever the output of `normalise` can change: it keys the scan cache.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

NORMALISATION_VERSION = 2

# Document separator inside a batch: its own class, so n-grams never cross from one document into the next.
DOC_SEP = "\x00"
# Table values for what is not a word character. Every word character maps above SPACE (the lowest is "0"),
# so "is a word character" is one comparison.
SEP, DROP, NEEDS_NFKC, SPACE = 0x00, 0x01, 0x02, 0x20
N_BMP = 0x10000
_SURROGATES = range(0xD800, 0xE000)


@functools.lru_cache(maxsize=1)
def table() -> np.ndarray:
    """uint16 per BMP code unit: the lowercase word character, or SEP / DROP / SPACE; built once per process."""
    out = np.full(N_BMP, DROP, dtype=np.uint16)
    for cp in range(N_BMP):
        ch = chr(cp)
        if ch.isalnum() and cp not in _SURROGATES:
            low = ch.lower()
            out[cp] = ord(low) if len(low) == 1 else cp  # the few one-to-many lowercasings keep their character
        elif ch.isspace():
            out[cp] = SPACE
    out[0] = SEP
    return out


def _composes_after() -> set[int]:
    """BMP characters NFKC may merge into the one before them (Unicode's NFKC_QC=Maybe, over-approximated).

    Only BMP compositions are searched: a character beyond the BMP is a surrogate pair here, always NEEDS_NFKC,
    so a composition that starts there sends its document through NFKC anyway.
    """
    found = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul vowel and final jamo
    for cp in range(N_BMP):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            found.update(int(part, 16) for part in d.split()[1:])
    return found


@functools.lru_cache(maxsize=1)
def fast_table() -> np.ndarray:
    """`table`, with NEEDS_NFKC for each character whose document must go through NFKC to map right.

    That is a character NFKC may merge with its neighbour, a surrogate (the character behind it is unknown here),
    or one that NFKC replaces by something the table maps differently ("²" -> "2", "ﬁ" -> "fi").
    Any other character contributes the same words with or without NFKC (tests check every BMP character).
    """
    base = table()
    out = base.copy()
    out[list(_SURROGATES)] = NEEDS_NFKC
    maybe = _composes_after()
    for cp in range(N_BMP):
        if cp in maybe:
            out[cp] = NEEDS_NFKC
            continue
        ch = chr(cp)
        if cp in _SURROGATES or unicodedata.is_normalized("NFKC", ch):
            continue
        norm = unicodedata.normalize("NFKC", ch)
        mapped = [base[ord(c)] if ord(c) < N_BMP else DROP for c in norm]
        risky = any(ord(c) in maybe or unicodedata.combining(c) for c in unicodedata.normalize("NFKD", ch))
        if risky or [m for m in mapped if m != DROP] != [m for m in [base[cp]] if m != DROP]:
            out[cp] = NEEDS_NFKC
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
