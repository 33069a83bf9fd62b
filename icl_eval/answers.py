"""Which answer a closed-book QA demonstration shows when a data file gives a list of accepted answers.

Scoring always accepts every answer; only the shown target (a demonstration's, and the `target` in sample logs)
is chosen here. Task files call these functions from their field expressions, e.g.
`fields: {answer: "canonical_alias(answers)"}`.

TriviaQA's DPR files (the local copy) list each question's aliases as an unordered set: the canonical name is
anywhere in it, often after symbols ('🚁'), misspellings ('Moreen lyon'), Wikipedia redirects ('The weather in
Milan', 'Tango (cat)') and other variants. `canonical_alias` picks, in this order of preference:

1. an alias with a letter or digit in it (never a symbol-only one);
2. one that is not an obviously derived form: no parenthesised qualifier ('Draughts (game)'), '(disambiguation)',
   URL escape ('%22'), namespace prefix ('UN/LOCODE:ITMIL'), '/Archive' or '/Draft' page, or redirect phrasing
   ('List of ...', 'History of ...', 'The weather in ...', 'Death and state funeral of ...');
3. the one the most other aliases contain, as whole words after the answer normalisation (the core name that the
   redirects elaborate: 'Milan' in 'Milan, Italy' and 'History of Milan'; 'Edward IV' in 'King Edward IV');
4. one in Latin script;
5. the most natural casing of a case variant: no odd capitals ('HUngary', 'ItalY'), no shouted words
   ('WINSTON CHURCHILL', 'TOP HAT'; an acronym or a Roman numeral is not one), fewest words starting in lower case ('Winston churchill');
6. no trailing punctuation ('So Solid Crew.');
7. the alias most similar to all the others (the sum of character-bigram Dice coefficients over the normalised
   forms: the medoid of its spelling variants);
8. the earliest in the file.

NQ-open and WebQuestions list separate correct answers in a meaningful order (annotators', Freebase's), so
`first_clean_answer` keeps the first unless it has no letter or digit or unbalanced brackets ('Russia\\xa0(').
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from icl_eval.metrics import normalize_answer

_DERIVED = re.compile(
    r"[()\[\]]"  # a parenthesised qualifier or a bracket
    r"|%[0-9A-Fa-f]{2}"  # a URL escape left in a page title
    r"|\S:[^\s\d]"  # a namespace prefix (UN/LOCODE:ITMIL, ISO 3166-1:PL); times like 10:30 pass
    r"|/(archive|draft|temp)\b"
    r"|\bdisambiguation\b"
    r"|^(the )?(list|lists|history|outline|index|glossary|timeline|religion|transport|geography|economy|culture"
    r"|demographics|politics|flag|coat of arms|weather|sister cities|death|anatomy|etymology|name)\b[\w ,&'-]* (of|in)\b",
    re.IGNORECASE,
)
_ROMAN = re.compile(r"^[IVX]+\W*$")  # a regnal number: "Henry VIII" is not shouting
_ODD_CAPS = re.compile(r"\b[A-Z]{2,}[a-z]|[a-z][A-Z]\b")  # 'HUngary', 'JOrdan', 'AlgeriA' (but 'McCoy' is fine)


def _has_alnum(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def is_derived(alias: str) -> bool:
    """Whether an alias looks like a derived form of a name rather than the name (rule 2 of the module doc)."""
    return bool(_DERIVED.search(alias))


def _casing(alias: str) -> tuple[int, int]:
    words = [w for w in alias.split() if any(ch.isalpha() for ch in w)]
    # An all-caps word of 4+ letters shouts (an acronym is shorter: 'UPS'); so do two all-caps words ('TOP HAT').
    caps = [w for w in words if w.isupper() and sum(ch.isalpha() for ch in w) >= 2 and not _ROMAN.match(w)]
    shouted = len(caps) if len(caps) >= 2 else sum(1 for w in caps if sum(ch.isalpha() for ch in w) >= 4)
    odd = len(_ODD_CAPS.findall(alias))
    lower_start = sum(1 for w in words if w[0].islower())
    return odd + shouted, lower_start


def _latin(alias: str) -> bool:
    return all(ord(ch) < 0x250 or not ch.isalpha() for ch in alias)  # Basic Latin up to Latin Extended-B


def _containment(aliases: list[str], norms: list[str]) -> list[int]:
    """For each alias, how many other aliases contain its normalised words as a whole-word run (a case or
    punctuation variant counts: titles collect such redirects).

    Only aliases sharing its rarest word are checked, so a 300-alias list costs a few thousand comparisons."""
    padded = [f" {n} " for n in norms]
    postings: dict[str, set[int]] = {}
    for j, n in enumerate(norms):
        for word in set(n.split()):
            postings.setdefault(word, set()).add(j)
    counts = []
    for i, n in enumerate(norms):
        words = n.split()
        if not words:
            counts.append(0)
            continue
        rarest = min(words, key=lambda w: len(postings[w]))
        counts.append(sum(1 for j in postings[rarest] if aliases[j] != aliases[i] and padded[i] in padded[j]))
    return counts


def _bigrams(text: str) -> set[str]:
    return {text[k : k + 2] for k in range(len(text) - 1)} or {text}


def _similarity(i: int, grams: list[set[str]]) -> float:
    own = grams[i]
    return sum(2 * len(own & g) / (len(own) + len(g)) for j, g in enumerate(grams) if j != i)


def canonical_alias(aliases: Sequence[str]) -> str:
    """The alias a demonstration shows, by the rules in the module doc; deterministic for a given list."""
    if isinstance(aliases, str) or not aliases:
        raise ValueError(f"expected a non-empty list of answer aliases, got {aliases!r}")
    aliases = [str(a) for a in aliases]
    norms = [normalize_answer(a) for a in aliases]
    contained = _containment(aliases, norms)
    # Each rule only ranks the aliases every earlier rule left tied: most lists are decided by rule 3.
    rules = (
        lambda i: not (_has_alnum(aliases[i]) and norms[i]),
        lambda i: is_derived(aliases[i]),
        lambda i: -contained[i],
        lambda i: not _latin(aliases[i]),
        lambda i: _casing(aliases[i]),
        lambda i: aliases[i].rstrip()[-1:] in ".,;:!?",
    )
    tied = list(range(len(aliases)))
    for rule in rules:
        if len(tied) == 1:
            return aliases[tied[0]]
        scores = {i: rule(i) for i in tied}
        best = min(scores.values())
        tied = [i for i in tied if scores[i] == best]
    if len(tied) == 1:
        return aliases[tied[0]]
    grams = [_bigrams(n) for n in norms]
    return aliases[max(tied, key=lambda i: (_similarity(i, grams), -i))]


def _balanced(text: str) -> bool:
    return all(text.count(a) == text.count(b) for a, b in ("()", "[]", "{}"))


def first_clean_answer(answers: Sequence[str]) -> str:
    """The first answer with a letter or digit and balanced brackets; the first answer when none has."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"expected a non-empty list of answers, got {answers!r}")
    answers = [str(a) for a in answers]
    return next((a for a in answers if _has_alnum(a) and _balanced(a)), answers[0])


# The functions a data mapping (`fields`, `hub_fields`) may call.
FIELD_FUNCTIONS = {"canonical_alias": canonical_alias, "first_clean_answer": first_clean_answer}
