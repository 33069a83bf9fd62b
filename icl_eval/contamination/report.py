"""From confirmed matches to the report: per example flags and statistics, per task counts (Table C.1 style)."""

from __future__ import annotations

from typing import Any

from icl_eval.contamination.index import EvalIndex, IndexedExample, percent
from icl_eval.contamination.normalise import NORMALISATION_VERSION
from icl_eval.formatting import percent_text

REPORT_VERSION = 2  # 2: 'fields' may be a list of document fields; document ids may be the corpus's own
DOCS_SHOWN = 3


def _longest_run(found: list[bool], length: int) -> int:
    """Longest stretch of example words covered by consecutive found n-grams."""
    best = run = 0
    for f in found:
        run = run + 1 if f else 0
        best = max(best, run)
    return best + length - 1 if best else 0


def example_entry(ex: IndexedExample, n: int, refs: dict[int, list], boilerplate: int) -> dict[str, Any]:
    length = min(n, ex.n_words)
    if refs.keys().isdisjoint(ex.grams):  # most examples: nothing matched, no set building needed
        return _entry(ex, n, dirty=False, found=0.0, longest=0, docs={}, ignored=0, shown=[])
    usable = {g for g in ex.grams if 0 < len(refs.get(g, ())) <= boilerplate}
    found = [g in usable for g in ex.grams]
    docs: dict[str, str | None] = {}
    for g in ex.grams:
        for doc_id, snippet in refs.get(g, ()) if g in usable else ():
            if docs.get(doc_id) is None:
                docs[doc_id] = snippet
    ignored = sum(1 for g in set(ex.grams) if len(refs.get(g, ())) > boilerplate)
    shown = sorted(docs, key=lambda d: docs[d] is None)[:DOCS_SHOWN]
    return _entry(ex, n, dirty=bool(usable), found=(sum(found) / len(found)) if found else 0.0,
                  longest=_longest_run(found, length) if found else 0, docs=docs, ignored=ignored, shown=shown)


def _entry(ex: IndexedExample, n: int, *, dirty: bool, found: float, longest: int, docs: dict[str, str | None],
           ignored: int, shown: list[str]) -> dict[str, Any]:
    return {
        "doc_id": ex.doc_id,
        "dirty": dirty,
        "n_words": ex.n_words,
        "matched_whole": ex.n_words < n,
        "ngrams": len(ex.grams),
        "fraction_found": found,
        "longest_match_words": longest,
        "documents_matched": len(docs),
        "boilerplate_ngrams_ignored": ignored,
        "documents": [{"id": d, "snippet": docs[d]} for d in shown],
    }


def build_report(index: EvalIndex, refs: dict[int, list], boilerplate: int, problems: dict, scan: dict) -> dict[str, Any]:
    tasks = {}
    for t in index.tasks:
        examples = [example_entry(ex, t.n, refs, boilerplate) for ex in t.examples]
        dirty = sum(e["dirty"] for e in examples)
        tasks[t.name] = {
            "n": t.n, "fields": t.fields, "total": len(examples), "dirty": dirty, "clean": len(examples) - dirty,
            "percent_clean": percent(len(examples) - dirty, len(examples)),
            "short_examples_matched_whole": sum(e["matched_whole"] for e in examples),
            "examples": examples,
        }
    return {
        "report_version": REPORT_VERSION, "normalisation_version": NORMALISATION_VERSION,
        "boilerplate_threshold": boilerplate, "scan": scan, "skipped_input": problems, "tasks": tasks,
    }


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _fields_cell(fields: str | list[str]) -> str:
    text = fields if isinstance(fields, str) else ", ".join(fields)
    return text.replace("|", "\\|")  # a Jinja filter's bar must not end the table cell


def summary_table(report: dict[str, Any]) -> str:
    """Per task: N, total, dirty, clean, percent clean (the counting half of the paper's Table C.1)."""
    rows = [[name, str(t["n"]), _fields_cell(t["fields"]), str(t["total"]), str(t["dirty"]), str(t["clean"]), percent_text(t["percent_clean"])]
            for name, t in report["tasks"].items()]
    return markdown_table(["task", "N", "fields", "total", "dirty", "clean", "% clean"], rows)


def dirty_ids(report: dict[str, Any], task: str) -> set[int]:
    return {e["doc_id"] for e in report["tasks"][task]["examples"] if e["dirty"]}
