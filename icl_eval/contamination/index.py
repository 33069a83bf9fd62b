"""The evaluation side: every example's n-grams, hashed, with the examples they came from.

Examples are keyed by doc_id like the sample logs and reduced to the fields the task's YAML names in
`contamination_fields` (see `example_text`). Each distinct n-gram text is one *gram*; the `GramTable` (sorted
hashes -> gram ids -> gram text) is all a corpus scan needs, a few MB that is sent to every worker once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from icl_eval.contamination.ngrams import gram_hashes, normalise_batch, prefix_hashes
from icl_eval.contamination.normalise import NORMALISATION_VERSION
from icl_eval.errors import IclEvalError
from icl_eval.task_config import TaskConfig

DEFAULT_N = 13
GPT3_RANGE = (8, 13)
# Bit-packed bitmaps over a few bits of the hashes screen out nearly every corpus n-gram before the binary search,
# the slow step (a cache miss per level for unsorted queries). The first is small enough to stay in cache while
# it sees every n-gram; the second, larger and sharper, sees only what the first let through. (bits, shift)
BITMAPS = ((21, 43), (24, 16))


_BIT = np.array([1 << k for k in range(8)], dtype=np.uint8)


def _bits_at(hashes: np.ndarray, bits: int, shift: int) -> np.ndarray:
    at = hashes >> np.uint64(shift)
    if shift + bits < 64:
        at &= np.uint64((1 << bits) - 1)
    return at.view(np.int64)  # numpy's index type: taking with it needs no converted copy of the indices


def _test_bits(bitmap: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.take(bitmap, at >> 3) & np.take(_BIT, at & 7)


@dataclass
class GramTable:
    """What a scan worker needs: hash -> gram ids (sorted by hash) and each gram's normalised text."""

    lengths: tuple[int, ...]  # the n-gram lengths to hash the corpus at (N, and shorter whole examples)
    hashes: np.ndarray  # uint64, sorted; a hash appears once per gram that has it
    gram_ids: np.ndarray  # int64, parallel to hashes
    texts: list[str]  # per gram: its normalised words joined by spaces (ngrams.Batch.keys), compared on every hash hit
    _bitmaps: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """Indices of the hashes that may be in the table (a superset; the binary search decides)."""
        if self._bitmaps is None:
            self._bitmaps = []
            for bits, shift in BITMAPS:
                bitmap = np.zeros(1 << bits, dtype=bool)
                bitmap[_bits_at(self.hashes, bits, shift)] = True
                self._bitmaps.append(np.packbits(bitmap, bitorder="little"))
        idx = None
        for (bits, shift), bitmap in zip(BITMAPS, self._bitmaps):
            hit = _test_bits(bitmap, _bits_at(hashes if idx is None else hashes[idx], bits, shift))
            idx = np.flatnonzero(hit != 0) if idx is None else idx[hit != 0]  # nonzero is several times faster on bool
        return idx

    def __getstate__(self) -> dict:
        # The gram texts travel as one string and its offsets: a few hundred thousand small objects took Dask
        # two seconds to scatter. Workers rebuild the bitmaps rather than receive them.
        ends = np.cumsum(np.fromiter(map(len, self.texts), dtype=np.int64, count=len(self.texts)))
        return {"lengths": self.lengths, "hashes": self.hashes, "gram_ids": self.gram_ids,
                "text_ends": ends, "text_data": "".join(self.texts)}

    def __setstate__(self, state: dict) -> None:
        data, ends = state["text_data"], state["text_ends"].tolist()
        texts = [data[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        self.__init__(state["lengths"], state["hashes"], state["gram_ids"], texts)

    def fingerprint(self) -> str:
        """The set of grams, whatever the order of the tasks and examples that produced them.

        Read from the sorted 64-bit hashes rather than the texts (a pass over a few hundred thousand small
        strings in hash order takes a third of a second). Two different eval sets would need the same hash
        multiset to share a fingerprint; even then `cache.load` only reuses hits whose gram texts it finds.
        """
        h = hashlib.sha256(f"v{NORMALISATION_VERSION} {self.lengths} {len(self.texts)}".encode())
        h.update(self.hashes.astype("<u8").tobytes())
        return h.hexdigest()[:24]


@dataclass
class IndexedExample:
    doc_id: int
    n_words: int
    grams: list[int]  # gram id at each n-gram position (one entry for an example shorter than N)


@dataclass
class IndexedTask:
    name: str
    n: int
    fields: str | list[str]  # as the task's contamination_fields says (a list: document fields)
    examples: list[IndexedExample]


@dataclass
class EvalIndex:
    table: GramTable
    tasks: list[IndexedTask]


RENDERED_PARTS = ("input", "target", "both")


def example_text(task: TaskConfig, doc: dict, doc_id: int) -> str:
    """The part of an example the contamination check reads.

    A list of document fields (names or Jinja expressions over the document) gives their text, one field after
    another, as the GPT-3 paper checked an example's own text; input | target | both give the rendered
    template's parts as the model sees them zero-shot, template words ("Q:", "A:") included.
    """
    fields = task.contamination_fields
    if isinstance(fields, str):
        from icl_eval.prompts import render_example

        inp, tgt = render_example(task, doc, doc_id)
        return inp if fields == "input" else tgt if fields == "target" else inp + task.target_delimiter + tgt
    return "\n".join(_field_text(task, entry, doc, doc_id) for entry in fields)


def _field_text(task: TaskConfig, entry: str, doc: dict, doc_id: int) -> str:
    if entry in doc:
        value = doc[entry]
    else:
        import jinja2

        from icl_eval.prompts import call_expression, compile_expression

        fn = compile_expression(entry, f"{task.path} ('contamination_fields')")
        try:
            value = call_expression(fn, **task.template_vars, **doc, doc=doc, doc_id=doc_id)
        except jinja2.UndefinedError as e:
            raise IclEvalError(f"{task.path}: 'contamination_fields' entry {entry!r}, doc {doc_id}: {e.message}; "
                               f"the document's fields are: {', '.join(sorted(doc))}") from None
        except Exception as e:  # a Python error inside the expression, or an unsafe one refused by the sandbox
            raise IclEvalError(f"{task.path}: 'contamination_fields' entry {entry!r}, doc {doc_id}: {type(e).__name__}: {e}") from None
    parts = value if isinstance(value, (list, tuple)) else [value]
    if not all(p is None or isinstance(p, (str, int, float)) for p in parts):
        raise IclEvalError(f"{task.path}: 'contamination_fields' entry {entry!r} gives {type(value).__name__} for doc {doc_id}; "
                           f"name a text field (or a list of texts)")
    return "\n".join("" if p is None else str(p) for p in parts)


def choose_n(ngram: str, lengths: list[int]) -> int:
    """N = 13, a fixed number, or `gpt3`: the 5th-percentile example length in words clamped to [8, 13]."""
    if ngram == "gpt3":
        if not lengths:
            return DEFAULT_N
        p5 = int(np.percentile(np.asarray(lengths), 5, method="lower"))
        return min(max(p5, GPT3_RANGE[0]), GPT3_RANGE[1])
    return parse_ngram(ngram)  # type: ignore[return-value]


def parse_ngram(ngram: str) -> int | str:
    """--ngram's value: a positive whole number of words, or 'gpt3'.

    int() decides, not str.isdigit: '²' is a digit to isdigit but not a number to int.
    """
    if ngram == "gpt3":
        return ngram
    try:
        n = int(ngram)
    except ValueError:
        n = 0
    if n < 1:
        raise IclEvalError(f"--ngram {ngram!r}: give a positive whole number of words (13 in the paper) or 'gpt3'")
    return n


def build_index(named_texts: list[tuple[str, str | list[str], list[tuple[int, str]]]], ngram: str) -> EvalIndex:
    """Index (task name, fields, [(doc_id, text)]) triples; n-grams that several examples share are one gram."""
    gram_of: dict[str, int] = {}
    texts: list[str] = []
    hashes: list[int] = []
    tasks = []
    for name, fields, docs in named_texts:
        batch = normalise_batch([text for _, text in docs])
        counts = np.bincount(batch.doc, minlength=len(docs))
        n = choose_n(ngram, counts.tolist())
        prefix = prefix_hashes(batch)
        first_word = np.concatenate([[0], np.cumsum(counts)])
        by_length: dict[int, dict[int, tuple[str, int]]] = {}  # length -> first word -> (key, hash)
        for length in sorted({n, *(int(c) for c in counts if 0 < c < n)}):
            starts, h = gram_hashes(batch, length, prefix)
            if length < n:  # only the examples of exactly this many words use it, whole
                pick = np.searchsorted(starts, first_word[:-1][counts == length])
                starts, h = starts[pick], h[pick]
            by_length[length] = dict(zip(starts.tolist(), zip(batch.keys(starts, length), h.tolist())))
        examples = []
        for i, (doc_id, _) in enumerate(docs):
            n_words = int(counts[i])
            length = min(n, n_words)
            positions = range(first_word[i], first_word[i] + n_words - length + 1) if n_words else range(0)
            ids = []
            for w in positions:
                text, value = by_length[length][w]
                gid = gram_of.get(text)
                if gid is None:
                    gid = gram_of[text] = len(texts)
                    texts.append(text)
                    hashes.append(value)
                ids.append(gid)
            examples.append(IndexedExample(doc_id, n_words, ids))
        tasks.append(IndexedTask(name, n, fields, examples))
    lengths = tuple(sorted({t.count(" ") + 1 for t in texts}))
    order = np.argsort(np.asarray(hashes, dtype=np.uint64), kind="stable")
    table = GramTable(lengths, np.asarray(hashes, dtype=np.uint64)[order], order.astype(np.int64), texts)
    return EvalIndex(table, tasks)


def index_tasks(tasks: list[TaskConfig], ngram: str, data_dir: str | None, seed: int) -> EvalIndex:
    """Load each task's evaluation split as a run does (data.load_source: doc_id is the index) and index it."""
    from icl_eval.data import load_source

    named = []
    for task in tasks:
        docs, _ = load_source(task.data, data_dir, seed, f"task '{task.name}' ({task.path})")
        fields = task.contamination_fields if isinstance(task.contamination_fields, str) else list(task.contamination_fields)
        named.append((task.name, fields, [(i, example_text(task, doc, i)) for i, doc in enumerate(docs)]))
    return build_index(named, ngram)


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else math.nan
