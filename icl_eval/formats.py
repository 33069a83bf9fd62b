"""Readers for dataset releases with a layout of their own: one pure function per format, a path in, documents out.

`data.READERS` dispatches to these by the names in FORMATS (the YAML's `data.format`)."""

from __future__ import annotations

import csv
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from icl_eval.errors import IclEvalError

LETTERS = "ABCDEFGH"


def read_race(path: Path, level: str) -> list[dict]:
    """RACE's release: a tar.gz of one JSON per passage (`article`, `questions`, `options`, `answers`), the
    passages of one level under `.../high/` or `.../middle/`. One document per question, in file order."""
    docs = []
    try:
        with tarfile.open(path, "r:*") as tar:
            # Read in archive order (a gzip stream cannot seek back cheaply), then sort by name for a stable doc order.
            files = sorted((m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and f"/{level}/" in f"/{m.name}")
            for name, raw in files:
                where = f"{path}:{name}"
                try:
                    passage = json.loads(raw)
                    questions, options, answers = passage["questions"], passage["options"], passage["answers"]
                    article = passage["article"]
                except json.JSONDecodeError as e:
                    raise IclEvalError(f"{where}: not valid JSON ({e.msg}); re-download the archive") from None
                except (KeyError, TypeError) as e:
                    raise IclEvalError(f"{where}: a RACE passage needs article, questions, options and answers (missing {e})") from None
                if not len(questions) == len(options) == len(answers):
                    raise IclEvalError(f"{where}: {len(questions)} questions, {len(options)} option lists and {len(answers)} answers; they must match")
                for i, (q, opts, ans) in enumerate(zip(questions, options, answers)):
                    if ans not in LETTERS[: len(opts)]:
                        raise IclEvalError(f"{where}: question {i}: answer {ans!r} is not one of the {len(opts)} option letters")
                    docs.append({"id": f"{passage.get('id', name)}#{i}", "article": article, "question": q,
                                 "options": list(opts), "answer": ans, "gold": LETTERS.index(ans)})
    except tarfile.TarError as e:
        first = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
        raise IclEvalError(f"{path}: not a readable tar archive ({first}); re-download it") from None
    if not docs:
        raise IclEvalError(f"{path}: no RACE passages under a '{level}/' folder in the archive; use RACE's own archive layout")
    return docs


def read_openbookqa_tsv(path: Path) -> list[dict]:
    """OpenBookQA's TSV release: a header row, then `ID, Question Stem, Choices, Complete Question, Answer Key`,
    the choices in one cell as "(A) .. (B) .. (C) .. (D) ..". Documents: id, question, choices, gold."""
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if header is None or "Choices" not in header or "Question Stem" not in header or "Answer Key" not in header:
            raise IclEvalError(f"{path}: expected OpenBookQA's header row (ID, Question Stem, Choices, ..., Answer Key), got {header!r}")
        col = {name: i for i, name in enumerate(header)}
        for lineno, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) < len(header):
                raise IclEvalError(f"{path}:{lineno}: {len(row)} tab-separated cells, the header names {len(header)}")
            choices = _lettered_choices(row[col["Choices"]])
            key = row[col["Answer Key"]].strip()
            if len(choices) < 2 or key not in LETTERS[: len(choices)]:
                raise IclEvalError(f"{path}:{lineno}: choices {row[col['Choices']][:60]!r} and answer key {key!r} do not fit the '(A) .. (B) ..' layout")
            docs.append({"id": row[col["ID"]] if "ID" in col else str(lineno), "question": row[col["Question Stem"]],
                         "choices": choices, "gold": LETTERS.index(key)})
    return docs


def _lettered_choices(cell: str) -> list[str]:
    """"(A) x (B) y (C) z" -> [x, y, z]: split at each next letter's marker in turn, so a "(" inside a choice stays."""
    out, rest = [], cell.strip()
    for i, letter in enumerate(LETTERS):
        marker = f"({letter}) "
        if not rest.startswith(marker):
            break
        rest = rest[len(marker):]
        nxt = f" ({LETTERS[i + 1]}) " if i + 1 < len(LETTERS) else None
        cut = rest.find(nxt) if nxt else -1
        out.append((rest if cut < 0 else rest[:cut]).strip())
        if cut < 0:
            rest = ""
            break
        rest = rest[cut + 1:]
    return out if not rest else []


def _json_records(path: Path) -> list:
    """A SuperGLUE .jsonl file (one record a line) or an official release .json ({"data": [records]})."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.name.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IclEvalError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); re-download the file") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data["data"]
    raise IclEvalError(f"{path}: expected {{\"data\": [...]}} (the official release layout) or one JSON record a line (.jsonl)")


def read_multirc(path: Path) -> list[dict]:
    """SuperGLUE MultiRC (passage -> questions -> answers): one document per question, so a demonstration shows a
    whole question with every answer labelled (the paper's K counts questions). Documents: idx (the question's
    id), passage_idx, paragraph, question, answers (texts) and labels (0/1, one per answer)."""
    docs = []
    for n, rec in enumerate(_json_records(path)):
        where = f"{path}: record {n}"
        try:
            passage = rec["passage"]
            for q in passage["questions"]:
                docs.append({"idx": q["idx"], "passage_idx": rec.get("idx", n), "paragraph": passage["text"], "question": q["question"],
                             "answers": [a["text"] for a in q["answers"]], "labels": [int(a["label"]) for a in q["answers"]]})
        except (KeyError, TypeError, ValueError) as e:
            raise IclEvalError(f"{where}: a MultiRC record needs passage.text and passage.questions[].answers[] with text and label ({type(e).__name__}: {e})") from None
    return docs


def read_record(path: Path) -> list[dict]:
    """ReCoRD: official dev.json (data -> passage {text, entities}, qas [{query, answers}]) or SuperGLUE's jsonl.
    One document per query, in the hub's layout: passage (the text, `@highlight` markers kept), query, entities
    (the passage's entity spans as text, end inclusive, duplicates dropped, in order) and answers."""
    docs = []
    for n, rec in enumerate(_json_records(path)):
        where = f"{path}: record {n}"
        try:
            text = rec["passage"]["text"]
            entities = _unique_texts(text[e["start"]: e["end"] + 1] for e in rec["passage"]["entities"])
            for q in rec["qas"]:
                answers = _unique_texts(a["text"] for a in q["answers"])
                docs.append({"idx": str(q.get("id", q.get("idx", len(docs)))), "passage": text, "query": q["query"],
                             "entities": entities, "answers": answers})
        except (KeyError, TypeError) as e:
            raise IclEvalError(f"{where}: a ReCoRD record needs passage.text, passage.entities[] (start, end) and qas[] (query, answers[].text) ({type(e).__name__}: {e})") from None
    return docs


def _unique_texts(texts) -> list[str]:
    return list(dict.fromkeys(texts))


FORMATS: dict[str, Callable[[Path], list[dict]]] = {
    "race_high": lambda path: read_race(path, "high"),
    "race_middle": lambda path: read_race(path, "middle"),
    "openbookqa_tsv": read_openbookqa_tsv,
    "multirc": read_multirc,
    "record": read_record,
}
