"""MultiRC, ReCoRD and SuperGLUE WSC: the three GPT-3 SuperGLUE tasks with kinds of their own
(binary_choice_group, entity_choice, judged_completion).

Golden prompts at 0, 1 and 3 shots: `icl-eval prompt` equals the paper's format written out here directly over the
raw records (read with json, not icl_eval's readers); MultiRC and WSC on shared/ (skipped when absent), ReCoRD on
rows this test writes in the official layout. Scoring on scripted models against hand-computed values; every task
end to end on a tiny random model at 0 and 1 shots."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from icl_eval import metrics
from icl_eval.cli import main
from icl_eval.evaluator import NoContextLimit, Settings, build_prompt, prepare, score_task
from icl_eval.registry import load_task
from tests.fakes import ScriptedModel
from test_tasks_reading import _run_prompt  # the `icl-eval prompt` output, parsed

WSC_HEAD = ("Final Exam with Answer Key\nInstructions: Please carefully read the following passages. For each passage, you must "
            "identify which noun the pronoun marked in *bold* refers to.\n=====\n")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- ReCoRD rows in the official layout, written here ----------------------------------------------------------

def _passage(text: str, entity_texts: list[str], queries: list[tuple[str, str, list[str]]]) -> dict:
    def spans(s: str) -> list[dict]:
        return [{"start": m.start(), "end": m.end() - 1} for m in re.finditer(re.escape(s), text)]
    return {"id": f"p{len(text)}", "passage": {"text": text, "entities": [sp for e in entity_texts for sp in spans(e)]},
            "qas": [{"id": qid, "query": q, "answers": [{**spans(a)[0], "text": a} for a in answers]} for qid, q, answers in queries]}


RECORD_DEV = [
    _passage("(CNN) Yuval Rabin criticized Donald Trump. Trump denied it, Hillary Clinton said.\n@highlight\nThe son of a former "
             "Israeli Prime Minister wrote an op ed\n@highlight\nWarns of parallels between Israel and the U.S. today.",
             ["Yuval Rabin", "Donald Trump", "Trump", "Hillary Clinton", "Israel", "U.S."],
             [("q1", "Rabin condemned @placeholder's aggressive rhetoric.", ["Donald Trump", "Trump"]),
              ("q2", "@placeholder wrote an op ed.", ["Yuval Rabin"])]),
    _passage("Chelsea beat Olimpija Ljubljana 2-1 in Slovenia.\n@highlight\nDiego Costa scored", ["Chelsea", "Olimpija Ljubljana", "Diego Costa"],
             [("q3", "@placeholder made it difficult.", ["Olimpija Ljubljana"])]),
]
RECORD_POOL = [
    {"idx": i, "passage": {"text": f"Story {i} about Alice and Bob in Paris.\n@highlight\nAlice met Bob {i}",
                           "entities": [{"start": len(f"Story {i} about "), "end": len(f"Story {i} about ") + 4}, {"start": len(f"Story {i} about Alice and "), "end": len(f"Story {i} about Alice and ") + 2}]},
     "qas": [{"idx": 100 + i, "query": "@placeholder went to Paris.", "answers": [{"start": 0, "end": 0, "text": "Alice"}]}]}
    for i in range(5)
]


@pytest.fixture()
def record_data(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "superglue/ReCoRD").mkdir(parents=True)
    (root / "superglue/FewGLUE/ReCoRD").mkdir(parents=True)
    (root / "superglue/ReCoRD/dev.json").write_text(json.dumps({"version": "1.0", "data": RECORD_DEV}))
    (root / "superglue/FewGLUE/ReCoRD/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORD_POOL))
    return root


# --- the paper's formats, written over raw records --------------------------------------------------------------

def _record_items(records: list[dict]) -> list[tuple[str, list[str], str, list[str]]]:
    """(context, entities, query, answers) per query; the figure: article, blank line, "- highlight." lines."""
    out = []
    for r in records:
        article, *highlights = r["passage"]["text"].split("\n@highlight\n")
        context = article + "\n\n" + "".join(f"- {h if h.endswith('.') else h + '.'}\n" for h in highlights)
        text = r["passage"]["text"]
        entities = list(dict.fromkeys(text[e["start"]: e["end"] + 1] for e in r["passage"]["entities"]))
        for q in r["qas"]:
            out.append((context, entities, q["query"], [a["text"] for a in q["answers"]]))
    return out


def _record_expected(records, pool, doc_id, demo_ids):
    demos = [_record_items(pool)[i] for i in demo_ids]
    prefix = "".join(f"{c}- {q.replace('@placeholder', a[0])}\n\n" for c, _, q, a in demos)
    context, entities, query, answers = _record_items(records)[doc_id]
    return prefix + context, [f"- {query.replace('@placeholder', e)}" for e in entities], next(i for i, e in enumerate(entities) if e in answers)


def _multirc_items(path: Path) -> list[tuple[str, list[str], list[int]]]:
    return [(f"{p['passage']['text'].strip()}\n\n{q['question']}", [a["text"] for a in q["answers"]], [a["label"] for a in q["answers"]])
            for p in _jsonl(path) for q in p["passage"]["questions"]]


def _line(answer: str, label: int) -> str:
    return f"- [{'True' if label else 'False'}] {answer}"


def _wsc_item(row: dict) -> tuple[str, str]:
    t = row["target"]
    words = row["text"].split(" ")
    words[t["span2_index"]] = words[t["span2_index"]].replace(t["span2_text"], f"*{t['span2_text']}*", 1)
    passage = " ".join(words).strip()
    for tok in (",", ".", "'s", ";", ":"):
        passage = passage.replace(" " + tok, tok)
    return (f"Passage: {passage}\nQuestion: In the passage above, what does the pronoun \"*{t['span2_text']}*\" refer to?\nAnswer:",
            t["span1_text"].lower())


@pytest.mark.parametrize("shots", [0, 1, 3])
def test_multirc_prompt_is_the_papers_format(shots, shared, capsys):
    sg = shared / "data/superglue"
    docs, pool = _multirc_items(sg / "MultiRC/val.jsonl"), _multirc_items(sg / "FewGLUE/MultiRC/train.jsonl")
    index = 5
    ids, context, target = _run_prompt("multirc", shots, index, shared / "data", capsys)
    assert len(ids) == shots
    demos = "".join(f"{c}\n" + "\n".join(_line(a, l) for a, l in zip(ans, labels)) + "\n\n" for c, ans, labels in (pool[i] for i in ids))
    ctx, answers, labels = docs[index]
    want_context = "READING COMPREHENSION ANSWER KEY\n" + demos + ctx
    assert context == want_context
    assert target == "\n" + "\n".join(_line(a, l) for a, l in zip(answers, labels))
    p = build_prompt(prepare(load_task("multirc"), Settings(data_dir=str(shared / "data"))), index, shots, 1234, NoContextLimit())
    assert p.pairs == tuple((want_context, "\n" + _line(a, label)) for a in answers for label in (0, 1))


@pytest.mark.parametrize("shots", [0, 1, 3])
def test_wsc_prompt_is_the_papers_format(shots, shared, capsys):
    sg = shared / "data/superglue"
    docs, pool = _jsonl(sg / "WSC/val.jsonl"), _jsonl(sg / "FewGLUE/WSC/train.jsonl")
    index = 5
    ids, context, target = _run_prompt("wsc", shots, index, shared / "data", capsys)
    assert len(ids) == shots
    demos = "".join(f"{q} {a}\n\n" for q, a in (_wsc_item(pool[i]) for i in ids))
    question, answer = _wsc_item(docs[index])
    assert (context, target) == (WSC_HEAD + demos + question, " " + answer)


@pytest.mark.parametrize("shots", [0, 1, 3])
def test_record_prompt_is_the_papers_format(shots, record_data, capsys):
    index = 2
    ids, context, target = _run_prompt("record", shots, index, record_data, capsys)
    assert len(ids) == shots
    want_context, continuations, gold = _record_expected(RECORD_DEV, RECORD_POOL, index, ids)
    assert (context, target) == (want_context, continuations[gold])
    p = build_prompt(prepare(load_task("record"), Settings(data_dir=str(record_data))), index, shots, 1234, NoContextLimit())
    assert p.pairs == tuple((want_context, c) for c in continuations)


def test_wsc_figure_g33_renders_as_printed(shared):
    """Figure G.33's example is WSC dev row 1 (typographic quotes aside)."""
    prep = prepare(load_task("wsc"), Settings(data_dir=str(shared / "data")))
    ex = prep.example(1)
    assert ex.input == ("Passage: Mr. Moncrieff visited Chester's luxurious New York apartment, thinking that it belonged to his son "
                        "Edward. The result was that Mr. Moncrieff has decided to cancel Edward's allowance on the ground that he no "
                        "longer requires *his* financial support.\nQuestion: In the passage above, what does the pronoun \"*his*\" "
                        "refer to?\nAnswer:")
    assert ex.target == "mr. moncrieff" and ex.gold == 1


def test_record_figure_layout_zero_shot(record_data):
    """The figure's ReCoRD layout: article, blank line, highlights as "- ...." lines; the query line is scored."""
    p = build_prompt(prepare(load_task("record"), Settings(data_dir=str(record_data))), 0, 0, 1234, NoContextLimit())
    assert p.context == ("(CNN) Yuval Rabin criticized Donald Trump. Trump denied it, Hillary Clinton said.\n\n- The son of a former "
                         "Israeli Prime Minister wrote an op ed.\n- Warns of parallels between Israel and the U.S. today.\n")
    assert [t for _, t in p.pairs] == [f"- Rabin condemned {e}'s aggressive rhetoric." for e in
                                       ["Yuval Rabin", "Donald Trump", "Trump", "Hillary Clinton", "Israel", "U.S."]]
    assert p.target == "- Rabin condemned Donald Trump's aggressive rhetoric."


def test_split_sizes(shared):
    sizes = {"multirc": (953, 32), "wsc": (104, 32)}
    for task, (n, pool) in sizes.items():
        prep = prepare(load_task(task), Settings(data_dir=str(shared / "data")))
        assert (len(prep.docs), len(prep.pool)) == (n, pool), task
    prep = prepare(load_task("multirc"), Settings(data_dir=str(shared / "data")))
    assert sum(len(prep.example(i).options) for i in range(len(prep.docs))) == 4848


# --- scoring, against hand-computed values ---------------------------------------------------------------------

def test_f1a_and_em_question_by_hand():
    # Question A: gold [1, 0, 1], picked [1, 1, 0] -> tp 1, fp 1, fn 1. Question B: gold [0, 1], picked [0, 1] -> tp 1.
    a, b = metrics.f1a_counts([1, 1, 0], [1, 0, 1]), metrics.f1a_counts([0, 1], [0, 1])
    assert (a, b) == ([1, 1, 1], [1, 0, 0])
    value, se = metrics.f1a([a, b])
    assert value == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2/3
    # Jackknife: leaving A out gives F1 1.0, leaving B out 0.5; sqrt(1/2 * ((1 - .75)^2 + (.5 - .75)^2)) = 0.25.
    assert se == pytest.approx(0.25)
    assert metrics.f1a([[0, 0, 0]]) == (0.0, None)  # nothing positive anywhere: 0, as sklearn's f1_score
    assert metrics.aggregate("em_question", [0.0, 1.0]) == (0.5, 0.5)


def _write(root: Path, rel: str, rows: list[dict]) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_multirc_scores_each_option_and_groups_by_question(tmp_path):
    passage = {"idx": 0, "passage": {"text": "Text.", "questions": [
        {"idx": 0, "question": "Q1?", "answers": [{"text": "a", "label": 1, "idx": 0}, {"text": "b", "label": 0, "idx": 1}, {"text": "c", "label": 1, "idx": 2}]},
        {"idx": 1, "question": "Q2?", "answers": [{"text": "d", "label": 0, "idx": 3}, {"text": "e", "label": 1, "idx": 4}]}]}}
    _write(tmp_path, "superglue/MultiRC/val.jsonl", [passage])
    _write(tmp_path, "superglue/FewGLUE/MultiRC/train.jsonl", [passage])
    # The model says True for a, b, e and False for c, d: Q1 has tp 1 (a), fp 1 (b), fn 1 (c); Q2 is all right.
    says_true = {"a", "b", "e"}
    model = ScriptedModel(score=lambda c, t: 0.0 if ("[True]" in t) == (t.rsplit(" ", 1)[1] in says_true) else -1.0)
    prep = prepare(load_task("multirc"), Settings(data_dir=str(tmp_path)))
    run = score_task(prep, 0, model, Settings(data_dir=str(tmp_path)))
    got = {r.metric: r.value for r in run.records}
    assert got == {"em_question": 0.5, "f1a": pytest.approx(2 / 3)}
    assert [o["pick"] for o in run.samples[0].fields["options"]] == [1, 1, 0]
    assert len(model.ll_requests) == 10  # 5 options x 2 labels


def test_record_picks_the_likeliest_entity_and_scores_it_against_every_answer(record_data):
    # q1: "Trump" is likeliest (an accepted answer: EM 1, F1 1); q2: "Donald Trump" (EM 0, F1 0 against "Yuval Rabin");
    # q3: "Diego Costa" vs "Olimpija Ljubljana" (0, 0).
    picks = {"Rabin condemned Trump's": 0.0, "- Donald Trump wrote": 0.0, "- Diego Costa made": 0.0}
    model = ScriptedModel(score=lambda c, t: 0.0 if any(t.startswith(k) or t.startswith("- " + k) for k in picks) else -5.0)
    prep = prepare(load_task("record"), Settings(data_dir=str(record_data)))
    run = score_task(prep, 0, model, Settings(data_dir=str(record_data)))
    assert [s.fields["prediction"] for s in run.samples] == ["Trump", "Donald Trump", "Diego Costa"]
    assert {r.metric: r.value for r in run.records} == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}
    # Partial credit: "Rabin" against "Yuval Rabin" is token F1 2/3 (precision 1, recall 1/2), exact match 0.
    assert metrics.METRICS["f1"].item("Rabin", ["Yuval Rabin"]) == pytest.approx(2 / 3)


def test_wsc_judges_a_row_true_when_the_completion_is_the_candidate(shared):
    data = str(shared / "data")
    prep = prepare(load_task("wsc"), Settings(data_dir=data, limit=None))
    prep.doc_ids = [0, 1, 2]  # rows 0 and 2 are false, row 1 (Figure G.33) true
    # The model always answers "Mr. Moncrieff" (normalised equal to row 1's "mr. moncrieff") and then "anyone".
    model = ScriptedModel(reply=lambda c: " Mr. Moncrieff" if "*his*" in c.rsplit("Passage:", 1)[1] else " lemon trees")
    run = score_task(prep, 0, model, Settings(data_dir=data))
    assert [s.fields["judged_true"] for s in run.samples] == [False, True, True]
    assert [s.metrics["acc"] for s in run.samples] == [1.0, 1.0, 0.0]  # row 2 is false but its candidate was generated
    assert run.records[0].value == pytest.approx(2 / 3)


# --- end to end on a tiny random model --------------------------------------------------------------------------

def test_new_kinds_end_to_end(tiny_checkpoint, shared, record_data, tmp_path, capsys):
    import torch

    # One data root holding the shared MultiRC/WSC files and the written ReCoRD rows.
    root = record_data
    for rel in ("superglue/MultiRC/val.jsonl", "superglue/FewGLUE/MultiRC/train.jsonl", "superglue/WSC/val.jsonl", "superglue/FewGLUE/WSC/train.jsonl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "data" / rel, root / rel)  # a link out of the data root is refused
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["run", "--model", str(tiny_checkpoint), "--tasks", "multirc,record,wsc", "--shots", "0,1", "--limit", "3",
                "--data-dir", str(root), "--output", str(tmp_path / "out")]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads(path.read_text())
    got = {(r["task"], r["shots"], r["metric"]): r for r in res["records"]}
    for task in ("multirc", "record", "wsc"):
        for k in (0, 1):
            for m in load_task(task).metrics:
                rec = got[(task, k, m)]
                assert rec["n"] == 3 and 0.0 <= rec["value"] <= 1.0 and not math.isnan(rec["value"]), (task, k, m)
            samples = [json.loads(x) for x in (path.parent / "samples" / f"{task}_{k}shot.jsonl").read_text().splitlines()]
            assert len(samples) == 3 and all(s["metrics"] for s in samples), task
