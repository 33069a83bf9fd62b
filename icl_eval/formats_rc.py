"""Readers for the reading-comprehension releases (CoQA, DROP, QuAC, SQuAD v2): each official nested JSON layout
flattened into one document per question. Pure functions, a path (or hub rows) in, documents out.

`data.READERS` dispatches to RC_FORMATS by the YAML's `data.format`; the hub copies of CoQA and QuAC hold one row
per dialogue, and HUB_LAYOUTS flattens those rows with the same code, so both sources give the same documents.

Documents of the conversational sets carry `history`: the earlier turns of the same dialogue, each
{question, answer}, in order (turn i sees turns < i, with the answers the asker was given)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError

# SQuAD v2's no-answer questions have no answer text; the target shown and scored is this word (docs/tasks.md).
SQUAD_NO_ANSWER = "unanswerable"
# QuAC's own marker: the teacher's reply to an unanswerable question, and the last word of every paragraph.
QUAC_NO_ANSWER = "CANNOTANSWER"


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IclEvalError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); re-download the file") from None
    except RecursionError:
        raise IclEvalError(f"{path}: JSON nested too deeply to read; re-download the file") from None


def _get(obj: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    """obj[key], checked to be of `types`; `where` names the file and the field path for the message."""
    if not isinstance(obj, dict):
        raise IclEvalError(f"{where}: expected a JSON object, got {type(obj).__name__}; the file is not in the official layout")
    if key not in obj:
        raise IclEvalError(f"{where}: missing field '{key}' (it has {', '.join(sorted(map(str, obj))) or 'no fields'}); the file is not in the official layout")
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise IclEvalError(f"{where}.{key}: expected {names}, got {type(value).__name__}; the file is not in the official layout")
    return value


def _unique(texts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in texts:
        if t not in out:
            out.append(t)
    return out


def _turn_docs(passage: dict, turns: list[tuple[str, str, str, list[str]]]) -> list[dict]:
    """One document per turn (id, question, answer shown in later turns, references): the passage's fields, the
    turn's question, its target `answer`, its accepted `answers` and the earlier turns as `history`."""
    docs = []
    for i, (turn_id, question, answer, answers) in enumerate(turns):
        history = [{"question": q, "answer": a} for _, q, a, _ in turns[:i]]
        docs.append({**passage, "id": turn_id, "turn": i + 1, "history": history, "question": question,
                     "answer": answer, "answers": _unique([answer, *answers])})
    return docs


# --- CoQA ------------------------------------------------------------------------------------------------------

def _coqa_story_docs(story_id: str, story: str, questions: list[str], answers: list[str], extra: list[list[str]], where: str) -> list[dict]:
    if len(questions) != len(answers):
        raise IclEvalError(f"{where}: {len(questions)} questions but {len(answers)} answers; every CoQA turn needs both")
    turns = [(f"{story_id}#{i + 1}", q, a, extra[i] if i < len(extra) else []) for i, (q, a) in enumerate(zip(questions, answers))]
    return _turn_docs({"story_id": story_id, "story": story}, turns)


def read_coqa(path: Path) -> list[dict]:
    """CoQA's coqa-dev-v1.0.json: data -> stories (`id`, `story`, `questions`, `answers`, `additional_answers`),
    questions and answers matched by `turn_id`. References: the answer and the additional answers of that turn."""
    stories = _get(_read_json(path), "data", list, str(path))
    docs = []
    for s, story in enumerate(stories):
        where = f"{path}: data[{s}]"
        questions = _get(story, "questions", list, where)
        answers = _get(story, "answers", list, where)
        q_texts = [_get(q, "input_text", str, f"{where}.questions[{i}]") for i, q in enumerate(questions)]
        a_texts = [_get(a, "input_text", str, f"{where}.answers[{i}]") for i, a in enumerate(answers)]
        q_turns = [q.get("turn_id", i + 1) for i, q in enumerate(questions)]
        a_turns = [a.get("turn_id", i + 1) for i, a in enumerate(answers)]
        if q_turns != a_turns:
            raise IclEvalError(f"{where}: question turn_ids {q_turns[:8]} and answer turn_ids {a_turns[:8]} differ; every CoQA turn needs one question and one answer")
        extra: list[list[str]] = [[] for _ in q_texts]
        additional = story.get("additional_answers") or {}
        if not isinstance(additional, dict):
            raise IclEvalError(f"{where}.additional_answers: expected a JSON object of answer lists, got {type(additional).__name__}")
        for key, alt in additional.items():
            if not isinstance(alt, list):
                raise IclEvalError(f"{where}.additional_answers.{key}: expected a list of answers, got {type(alt).__name__}")
            for i, a in enumerate(alt):
                text = _get(a, "input_text", str, f"{where}.additional_answers.{key}[{i}]")
                turn = a.get("turn_id", i + 1)
                if turn in q_turns:
                    extra[q_turns.index(turn)].append(text)
        story_id = str(story.get("id", s))
        docs += _coqa_story_docs(story_id, _get(story, "story", str, where), q_texts, a_texts, extra, where)
    return docs


def coqa_hub_rows(rows: list[dict], where: str) -> list[dict]:
    """stanfordnlp/coqa: a row per story (`story`, `questions`, `answers.input_text`); no additional answers."""
    docs = []
    for r, row in enumerate(rows):
        at = f"{where}: row {r}"
        answers = _get(_get(row, "answers", dict, at), "input_text", list, f"{at}.answers")
        docs += _coqa_story_docs(str(r), _get(row, "story", str, at), _get(row, "questions", list, at), answers, [], at)
    return docs


# --- QuAC ------------------------------------------------------------------------------------------------------

def _quac_passage(title: str, section_title: str, context: str) -> dict:
    # Every QuAC paragraph ends in " CANNOTANSWER" (the span an unanswerable reply points at): not part of the text.
    return {"title": title, "section_title": section_title, "context": context.strip().removesuffix(QUAC_NO_ANSWER).rstrip()}


def read_quac(path: Path) -> list[dict]:
    """QuAC's val_v0.2.json: data -> sections (`title`, `section_title`, `paragraphs`) -> dialogues (`id`,
    `context`, `qas`: `question`, `id`, `orig_answer.text`, `answers[].text`). The target and the history show
    the teacher's reply (`orig_answer`); references add the other annotators' answers."""
    sections = _get(_read_json(path), "data", list, str(path))
    docs = []
    for s, section in enumerate(sections):
        where = f"{path}: data[{s}]"
        title = _get(section, "title", str, where).strip()
        section_title = str(section.get("section_title", "")).strip()
        for p, para in enumerate(_get(section, "paragraphs", list, where)):
            pwhere = f"{where}.paragraphs[{p}]"
            passage = {"dialog_id": str(para.get("id", f"{s}.{p}")), **_quac_passage(title, section_title, _get(para, "context", str, pwhere))}
            turns = []
            for t, qa in enumerate(_get(para, "qas", list, pwhere)):
                qwhere = f"{pwhere}.qas[{t}]"
                orig = _get(_get(qa, "orig_answer", dict, qwhere), "text", str, f"{qwhere}.orig_answer").strip()
                others = [_get(a, "text", str, f"{qwhere}.answers[{i}]").strip() for i, a in enumerate(_get(qa, "answers", list, qwhere))]
                turns.append((str(qa.get("id", f"{passage['dialog_id']}#{t}")), _get(qa, "question", str, qwhere), orig, others))
            docs += _turn_docs(passage, turns)
    return docs


def quac_hub_rows(rows: list[dict], where: str) -> list[dict]:
    """allenai/quac: a row per dialogue (`wikipedia_page_title`, `section_title`, `context`, `turn_ids`,
    `questions`, `orig_answers.texts`, `answers.texts` a list per turn)."""
    docs = []
    for r, row in enumerate(rows):
        at = f"{where}: row {r}"
        questions = _get(row, "questions", list, at)
        orig = _get(_get(row, "orig_answers", dict, at), "texts", list, f"{at}.orig_answers")
        others = _get(_get(row, "answers", dict, at), "texts", list, f"{at}.answers")
        if not len(questions) == len(orig) == len(others):
            raise IclEvalError(f"{at}: {len(questions)} questions, {len(orig)} orig_answers and {len(others)} answer lists; they must match")
        ids = row.get("turn_ids") or [f"{r}#{t}" for t in range(len(questions))]
        passage = {"dialog_id": str(row.get("dialogue_id", r)),
                   **_quac_passage(_get(row, "wikipedia_page_title", str, at).strip(), str(row.get("section_title", "")).strip(), _get(row, "context", str, at))}
        docs += _turn_docs(passage, [(str(i), q, o.strip(), [a.strip() for a in alts]) for i, q, o, alts in zip(ids, questions, orig, others)])
    return docs


# --- DROP ------------------------------------------------------------------------------------------------------

def _drop_answer(answer: Any, where: str) -> str:
    """One DROP answer as text: the number, else the spans joined by ", ", else the date as "day month year" (the
    order of DROP's own evaluation script); "" when the annotator gave none."""
    if not isinstance(answer, dict):
        raise IclEvalError(f"{where}: expected an answer object (number, spans, date), got {type(answer).__name__}")
    number = str(answer.get("number", "")).strip()
    if number:
        return number
    spans = answer.get("spans") or []
    if not isinstance(spans, list) or not all(isinstance(x, str) for x in spans):
        raise IclEvalError(f"{where}.spans: expected a list of strings")
    if spans:
        return ", ".join(x.strip() for x in spans)
    date = answer.get("date") or {}
    if not isinstance(date, dict):
        raise IclEvalError(f"{where}.date: expected an object with day, month, year")
    return " ".join(str(date.get(k, "")).strip() for k in ("day", "month", "year") if str(date.get(k, "")).strip())


def read_drop(path: Path) -> list[dict]:
    """DROP's drop_dataset_dev.json: {passage id: {`passage`, `qa_pairs`: [{`question`, `query_id`, `answer`,
    `validated_answers`}]}}. Target: `answer`; references: it and the validated answers. A question none of whose
    answers holds anything is left out (it could never be scored)."""
    sections = _read_json(path)
    if not isinstance(sections, dict):
        raise IclEvalError(f"{path}: expected a JSON object of passages keyed by passage id (DROP's layout), got {type(sections).__name__}")
    docs = []
    for pid, section in sections.items():
        where = f"{path}: {pid}"
        passage = _get(section, "passage", str, where)
        for q, qa in enumerate(_get(section, "qa_pairs", list, where)):
            qwhere = f"{where}.qa_pairs[{q}]"
            answers = [_drop_answer(_get(qa, "answer", dict, qwhere), f"{qwhere}.answer")]
            validated = qa.get("validated_answers") or []
            if not isinstance(validated, list):
                raise IclEvalError(f"{qwhere}.validated_answers: expected a list of answers, got {type(validated).__name__}")
            answers += [_drop_answer(a, f"{qwhere}.validated_answers[{i}]") for i, a in enumerate(validated)]
            answers = _unique(a for a in answers if a)
            if not answers:
                continue
            docs.append({"id": str(qa.get("query_id", f"{pid}#{q}")), "passage_id": str(pid), "passage": passage,
                         "question": _get(qa, "question", str, qwhere), "answer": answers[0], "answers": answers})
    return docs


# --- SQuAD v2 --------------------------------------------------------------------------------------------------

def read_squad_v2(path: Path) -> list[dict]:
    """SQuAD 2.0's dev-v2.0.json: data -> articles (`title`, `paragraphs`) -> (`context`, `qas`: `question`, `id`,
    `answers[].text`, `is_impossible`). A question without answers is unanswerable: target and reference
    SQUAD_NO_ANSWER."""
    articles = _get(_read_json(path), "data", list, str(path))
    docs = []
    for a, article in enumerate(articles):
        where = f"{path}: data[{a}]"
        title = _get(article, "title", str, where)
        for p, para in enumerate(_get(article, "paragraphs", list, where)):
            pwhere = f"{where}.paragraphs[{p}]"
            context = _get(para, "context", str, pwhere)
            for q, qa in enumerate(_get(para, "qas", list, pwhere)):
                qwhere = f"{pwhere}.qas[{q}]"
                texts = [_get(x, "text", str, f"{qwhere}.answers[{i}]") for i, x in enumerate(_get(qa, "answers", list, qwhere))]
                impossible = bool(qa.get("is_impossible", not texts))
                if not impossible and not texts:
                    raise IclEvalError(f"{qwhere}: no answers, but is_impossible is false; an answerable question needs its answers")
                answers = [SQUAD_NO_ANSWER] if impossible else _unique(texts)
                docs.append({"id": str(qa.get("id", f"{a}.{p}.{q}")), "title": title, "context": context,
                             "question": _get(qa, "question", str, qwhere), "is_impossible": impossible,
                             "answer": answers[0], "answers": answers})
    return docs


RC_FORMATS: dict[str, Callable[[Path], list[dict]]] = {
    "coqa": read_coqa, "drop": read_drop, "quac": read_quac, "squad_v2": read_squad_v2,
}

# Formats whose hub copy holds one row per dialogue: its rows are flattened to the local reader's documents.
HUB_LAYOUTS: dict[str, Callable[[list[dict], str], list[dict]]] = {
    "coqa": coqa_hub_rows, "quac": quac_hub_rows,
}
