"""Each GPT-3 suite task checks its example's own text (passage, question, options, ...), never template words.

An example's document fields, copied verbatim into one corpus document among filler, must make that example
dirty with every one of its n-grams found. Were a task's `contamination_fields` missing (the rendered prompt,
`both`, is then checked), the template's words ("question:", "answer:", "True, False, or Neither?") and the
target would be n-grams the corpus does not hold, and the fraction found would fall below 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from icl_eval.contamination.cli import check
from icl_eval.contamination.index import index_tasks
from icl_eval.contamination.scan import ScanOptions
from icl_eval.evaluator import Settings, prepare
from icl_eval.registry import load_tasks

FILLER = "the river flows past old stone walls and quiet gardens where children play"
DOC_ID = 5  # not the first document, so a field read from the wrong document would not pass by chance


def _lines(*parts: str | list[str]) -> str:
    return "\n".join(p for part in parts for p in (part if isinstance(part, list) else [part]))


# What the paper's Appendix C would look for: the example's text as the data gives it, in the data's own words.
PLANTED: dict[str, Callable[[dict], str]] = {
    "wsc273": lambda d: _lines(*(option + " " + d["continuation"] for option in d["context_options"])),
    "openbookqa": lambda d: _lines(d["query"], d["choices"]),
    "race_h": lambda d: _lines(d["article"], d["question"], d["options"]),
    "race_m": lambda d: _lines(d["article"], d["question"], d["options"]),
    "boolq": lambda d: _lines(d["passage"], d["question"]),
    "cb": lambda d: _lines(d["premise"], d["hypothesis"]),
    "copa": lambda d: _lines(d["premise"], d["choice1"], d["choice2"]),
    "rte": lambda d: _lines(d["premise"], d["hypothesis"]),
    "wic": lambda d: _lines(d["sentence1"], d["sentence2"]),
    "anli_r1": lambda d: _lines(d["premise"], d["hypothesis"]),
    "anli_r2": lambda d: _lines(d["premise"], d["hypothesis"]),
    "anli_r3": lambda d: _lines(d["premise"], d["hypothesis"]),
    "storycloze": lambda d: _lines(*(d[f"InputSentence{i}"] for i in range(1, 5)),
                                   d["RandomFifthSentenceQuiz1"], d["RandomFifthSentenceQuiz2"]),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_the_examples_own_fields_verbatim_in_a_corpus_document_make_it_dirty(shared, tmp_path, name):
    data = shared / "data"
    (task,) = load_tasks(name)
    if task.data.local and not (data / task.data.local).exists():
        pytest.skip(f"{task.data.local} not under {data}")  # StoryCloze's files are released on request only
    doc = prepare(task, Settings(seed=1234, data_dir=str(data))).docs[DOC_ID]
    corpus = tmp_path / "corpus.jsonl"
    records = [{"id": "filler", "text": FILLER}, {"id": "planted", "text": f"{FILLER} {PLANTED[name](doc)} {FILLER}"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    index = index_tasks([task], "13", str(data), 1234)
    report = check(index, [str(corpus)], ScanOptions(), workers=1).report["tasks"][name]
    assert isinstance(report["fields"], list), f"{name}: contamination_fields should list the document's fields"
    example = next(e for e in report["examples"] if e["doc_id"] == DOC_ID)
    assert example["dirty"] and [d["id"] for d in example["documents"]] == ["planted"]
    assert example["fraction_found"] == 1.0, f"{name}: some checked n-grams are not the example's own text"
