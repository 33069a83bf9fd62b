"""The GPT-3 reading-comprehension tasks (CoQA, DROP, QuAC, SQuAD v2) on a few rows written in each release's own
layout: the prompt command against the paper's Appendix G format (written out here over the raw rows, not with
icl_eval's readers) at 0, 1 and 3 shots, the figures' own examples, the readers' flattening, the hub layouts, and
an end-to-end run of each task on a tiny random model."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from icl_eval.cli import main
from icl_eval.evaluator import NoContextLimit
from icl_eval.evaluator import Settings, build_prompt, prepare
from icl_eval.registry import builtin_dir, load_task

RC_TASKS = ["coqa", "drop", "quac", "squad_v2"]

# --- rows in the official layouts ------------------------------------------------------------------------------

COQA = {"version": "1.0", "data": [
    {"source": "mctest", "id": "s1", "filename": "a.txt", "story": "Tom has a red dog.\n\nThe dog is called Rex.",
     "questions": [{"input_text": "What does Tom have?", "turn_id": 1}, {"input_text": "What color is it?", "turn_id": 2},
                   {"input_text": "What is its name?", "turn_id": 3}],
     "answers": [{"span_start": 4, "span_end": 17, "span_text": "has a red dog", "input_text": "a dog", "turn_id": 1},
                 {"span_start": 10, "span_end": 13, "span_text": "red", "input_text": "red", "turn_id": 2},
                 {"span_start": 37, "span_end": 40, "span_text": "Rex", "input_text": "Rex", "turn_id": 3}],
     "additional_answers": {"0": [{"input_text": "a red dog", "turn_id": 1}, {"input_text": "Red", "turn_id": 2}, {"input_text": "Rex", "turn_id": 3}],
                            "1": [{"input_text": "dog", "turn_id": 1}, {"input_text": "red", "turn_id": 2}, {"input_text": "rex", "turn_id": 3}]}},
    {"source": "gutenberg", "id": "s2", "filename": "b.txt", "story": "Ann lives in Paris. She works at a bakery.",
     "questions": [{"input_text": "Where does Ann live?", "turn_id": 1}, {"input_text": "Where does she work?", "turn_id": 2},
                   {"input_text": "Is she a doctor?", "turn_id": 3}],
     "answers": [{"input_text": "Paris", "turn_id": 1}, {"input_text": "at a bakery", "turn_id": 2}, {"input_text": "unknown", "turn_id": 3}],
     "additional_answers": {}},
]}

QUAC = {"data": [
    {"title": "William Perry (American football)", "section_title": "Professional career", "background": "Perry is a former player.",
     "paragraphs": [{"id": "d1", "context": "In 1985, he was selected by the Chicago Bears. He scored a touchdown in Super Bowl XX. CANNOTANSWER",
                     "qas": [{"question": "what team did he play for?", "id": "d1#0", "followup": "y", "yesno": "x",
                              "answers": [{"text": "the Chicago Bears", "answer_start": 30}, {"text": "Chicago Bears", "answer_start": 34}],
                              "orig_answer": {"text": "the Chicago Bears", "answer_start": 30}},
                             {"question": "did he score?", "id": "d1#1", "followup": "y", "yesno": "y",
                              "answers": [{"text": "He scored a touchdown in Super Bowl XX.", "answer_start": 48}],
                              "orig_answer": {"text": "He scored a touchdown in Super Bowl XX.", "answer_start": 48}},
                             {"question": "what was his salary?", "id": "d1#2", "followup": "n", "yesno": "x",
                              "answers": [{"text": "CANNOTANSWER", "answer_start": 88}],
                              "orig_answer": {"text": "CANNOTANSWER", "answer_start": 88}}]}]},
    {"title": "Ada Lovelace", "section_title": "Early life",
     "paragraphs": [{"id": "d2", "context": "Ada was born in London in 1815. She studied mathematics. CANNOTANSWER",
                     "qas": [{"question": "where was she born?", "id": "d2#0", "answers": [{"text": "London", "answer_start": 16}],
                              "orig_answer": {"text": "London", "answer_start": 16}},
                             {"question": "what did she study?", "id": "d2#1", "answers": [{"text": "mathematics", "answer_start": 44}],
                              "orig_answer": {"text": "She studied mathematics.", "answer_start": 32}}]}]},
    {"title": "Alan Turing", "section_title": "Education",
     "paragraphs": [{"id": "d3", "context": "Turing studied at King's College. CANNOTANSWER",
                     "qas": [{"question": "where did he study?", "id": "d3#0", "answers": [{"text": "King's College", "answer_start": 18}],
                              "orig_answer": {"text": "King's College", "answer_start": 18}}]}]},
]}

DROP = {
    "history_1": {"passage": "Saint Jean de Brebeuf travelled to New France in 1625. He went back to France in 1629.",
                  "qa_pairs": [{"question": "How many years did he stay in New France?", "query_id": "q1",
                                "answer": {"number": "4", "date": {"day": "", "month": "", "year": ""}, "spans": []},
                                "validated_answers": [{"number": "4", "date": {"day": "", "month": "", "year": ""}, "spans": []},
                                                      {"number": "four", "date": {"day": "", "month": "", "year": ""}, "spans": []}]},
                               {"question": "When did he go back?", "query_id": "q2",
                                "answer": {"number": "", "date": {"day": "", "month": "", "year": "1629"}, "spans": []},
                                "validated_answers": []}]},
    "nfl_2": {"passage": "The Bears beat the Lions and the Packers in 1985.",
              "qa_pairs": [{"question": "Which teams did the Bears beat?", "query_id": "q3",
                            "answer": {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["the Lions", "the Packers"]},
                            "validated_answers": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Lions", "Packers"]}]},
                           {"question": "Who won?", "query_id": "q4",
                            "answer": {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["The Bears"]},
                            "validated_answers": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Bears"]}]},
                           {"question": "When was it?", "query_id": "q5",
                            "answer": {"number": "", "date": {"day": "16", "month": "March", "year": "1985"}, "spans": []},
                            "validated_answers": []}]},
}

SQUAD = {"version": "v2.0", "data": [
    {"title": "The_Blitz", "paragraphs": [
        {"context": "The Luftwaffe flew 4,000 sorties that month. It flew inland missions only on moonlit nights.",
         "qas": [{"question": "How many sorties were flown in March 1941?", "id": "a1", "is_impossible": False,
                  "answers": [{"text": "4,000", "answer_start": 19}, {"text": "4,000", "answer_start": 19}, {"text": "4,000 sorties", "answer_start": 19}]},
                 {"question": "Who flew 5,000 sorties?", "id": "a2", "is_impossible": True, "answers": [],
                  "plausible_answers": [{"text": "The Luftwaffe", "answer_start": 0}]},
                 {"question": "When did the Luftwaffe fly inland missions?", "id": "a3", "is_impossible": False,
                  "answers": [{"text": "only on moonlit nights", "answer_start": 67}]}]}]},
    {"title": "Normans", "paragraphs": [
        {"context": "The Normans gave their name to Normandy.",
         "qas": [{"question": "What did the Normans name?", "id": "b1", "is_impossible": False, "answers": [{"text": "Normandy", "answer_start": 31}]},
                 {"question": "Who named Paris?", "id": "b2", "is_impossible": True, "answers": []}]}]},
]}

FILES = {"coqa": ("coqa/coqa-dev-v1.0.json", COQA), "drop": ("drop/drop_dataset_dev.json", DROP),
         "quac": ("quac/val_v0.2.json", QUAC), "squad_v2": ("squad_v2/dev-v2.0.json", SQUAD)}


def write_rc_data(root: Path, files: dict = FILES) -> Path:
    for rel, content in files.values():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture()
def rc_data(tmp_path) -> Path:
    return write_rc_data(tmp_path / "data")


# --- the paper's formats, written out directly over the raw rows -------------------------------------------------
# Each gives, per question in file order, (context, answer shown in a demonstration, references).

def _turns(qas: list[tuple[str, str]]) -> list[str]:
    return [f"Q: {q}\n\nA: {a}\n\n" for q, a in qas]


def _coqa_expected() -> list[tuple[str, str, list[str]]]:
    out = []
    for s in COQA["data"]:
        qa = [(q["input_text"], a["input_text"]) for q, a in zip(s["questions"], s["answers"])]
        for i, (q, a) in enumerate(qa):
            alts = [x["input_text"] for alt in s["additional_answers"].values() for x in alt if x["turn_id"] == i + 1]
            out.append((s["story"] + "\n\n" + "".join(_turns(qa[:i])) + f"Q: {q}\n\nA:", a, list(dict.fromkeys([a, *alts]))))
    return out


def _quac_expected() -> list[tuple[str, str, list[str]]]:
    out = []
    for section in QUAC["data"]:
        for para in section["paragraphs"]:
            head = f"TITLE: {section['title']} - {section['section_title']}\nPARAGRAPH: {para['context'].removesuffix(' CANNOTANSWER')}\n\n"
            qa = [(t["question"], t["orig_answer"]["text"]) for t in para["qas"]]
            for i, (t, (q, a)) in enumerate(zip(para["qas"], qa)):
                out.append((head + "".join(_turns(qa[:i])) + f"Q: {q}\n\nA:", a, list(dict.fromkeys([a, *(x["text"] for x in t["answers"])]))))
    return out


def _drop_text(ans: dict) -> str:
    if ans["number"]:
        return ans["number"]
    if ans["spans"]:
        return ", ".join(ans["spans"])
    return " ".join(v for v in (ans["date"]["day"], ans["date"]["month"], ans["date"]["year"]) if v)


def _drop_expected() -> list[tuple[str, str, list[str]]]:
    return [(f"Passage: {sec['passage']}\nQuestion: {qa['question']}\nAnswer:", _drop_text(qa["answer"]),
             list(dict.fromkeys(_drop_text(a) for a in [qa["answer"], *qa["validated_answers"]])))
            for sec in DROP.values() for qa in sec["qa_pairs"]]


def _squad_expected() -> list[tuple[str, str, list[str]]]:
    out = []
    for art in SQUAD["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                refs = list(dict.fromkeys(a["text"] for a in qa["answers"])) or ["unanswerable"]
                out.append((f"Title: {art['title'].replace('_', ' ')}\n\nBackground: {para['context']}\n\nQ: {qa['question']}\n\nA:", refs[0], refs))
    return out


EXPECTED = {"coqa": _coqa_expected, "drop": _drop_expected, "quac": _quac_expected, "squad_v2": _squad_expected}


def _run_prompt(task: str, shots: int, index: int, data: Path, capsys) -> tuple[list[int], str, str]:
    assert main(["prompt", task, "--shots", str(shots), "--index", str(index), "--data-dir", str(data)]) == 0
    out, err = capsys.readouterr()
    ids = ast.literal_eval(re.search(r"demonstrations (\[[0-9, ]*\])", err).group(1))
    lines = out.split("\n--- repr ---\n", 1)[1].splitlines()
    return ids, ast.literal_eval(lines[0]), ast.literal_eval(lines[1])


@pytest.mark.parametrize("shots", [0, 1, 3])
@pytest.mark.parametrize("task", RC_TASKS)
def test_prompt_command_is_the_papers_format(task, shots, rc_data, capsys):
    expected = EXPECTED[task]()
    index = 2  # a later turn of the first dialogue: its history is shown
    ids, context, target = _run_prompt(task, shots, index, rc_data, capsys)
    assert len(ids) == shots and index not in ids
    prep = prepare(load_task(task), Settings(data_dir=str(rc_data)))
    if prep.task.fewshot_group:  # CoQA, QuAC: never a turn of the same story or dialogue
        group = prep.task.fewshot_group
        assert all(prep.docs[i][group] != prep.docs[index][group] for i in ids)
    demos = "".join(f"{expected[i][0]} {expected[i][1]}\n\n" for i in ids)
    assert context == demos + expected[index][0]
    assert target == " " + expected[index][1]
    # The scored references: every accepted answer of the question.
    assert len(prep.docs) == len(expected)
    assert [list(prep.example(i).references) for i in range(len(expected))] == [e[2] for e in expected]


# --- the figures' own examples -----------------------------------------------------------------------------------

HELSINKI = ("Helsinki is the capital and largest city of Finland. It is in the region of Uusimaa, in southern Finland, on the "
            "shore of the Gulf of Finland. Helsinki has a population of , an urban population of , and a metropolitan "
            "population of over 1.4 million, making it the most populous municipality and urban area in Finland. Helsinki "
            "is some north of Tallinn, Estonia, east of Stockholm, Sweden, and west of Saint Petersburg, Russia. Helsinki "
            "has close historical connections with these three cities.\n\nThe Helsinki metropolitan area includes the urban "
            "core of Helsinki, Espoo, Vantaa, Kauniainen, and surrounding commuter towns. It is the world's northernmost "
            "metro area of over one million people, and the city is the northernmost capital of an EU member state.")
BREBEUF = ("Saint Jean de Brébeuf was a French Jesuit missionary who travelled to New France in 1625. There he worked "
           "primarily with the Huron for the rest of his life, except for a few years in France from 1629 to 1633.")
FIGURE_QA = [("what is the most populous municipality in Finland?", "Helsinki"), ("how many people live there?", "1.4 million in the metropolitan area"),
             ("what percent of the foreign companies that operate in Finland are in Helsinki?", "75%"),
             ("what towns are a part of the metropolitan area?", "Helsinki, Espoo, Vantaa, Kauniainen, and surrounding commuter towns")]


def test_figures_render_as_printed(tmp_path):
    """Figures G.18 (CoQA, the fourth turn), G.20 (DROP), G.25 (QuAC, a first turn) and G.28 (SQuADv2, without the
    figure's earlier question of the same paragraph), their passages shortened."""
    coqa = {"data": [{"id": "h", "story": HELSINKI, "questions": [{"input_text": q, "turn_id": i + 1} for i, (q, _) in enumerate(FIGURE_QA)],
                      "answers": [{"input_text": a, "turn_id": i + 1} for i, (_, a) in enumerate(FIGURE_QA)]}]}
    drop = {"b": {"passage": BREBEUF, "qa_pairs": [{"question": "How many years did Saint Jean de Brébeuf stay in New France before he went back to France for a few years?",
                                                    "query_id": "x", "answer": {"number": "4", "date": {}, "spans": []}}]}}
    quac = {"data": [{"title": "William Perry (American football)", "section_title": "Professional career",
                      "paragraphs": [{"id": "p", "context": "In 1985, he was selected in the first round of the 1985 NFL Draft by the Chicago Bears. CANNOTANSWER",
                                      "qas": [{"question": "what team did he play for?", "id": "p#0", "answers": [{"text": "the Chicago Bears"}],
                                               "orig_answer": {"text": "the Chicago Bears"}}]}]}]}
    squad = {"data": [{"title": "The_Blitz", "paragraphs": [{"context": "From the German point of view, March 1941 saw an improvement.",
                                                            "qas": [{"question": "When did the Luftwaffe fly inland missions?", "id": "x",
                                                                     "answers": [{"text": "only on moonlit nights"}]}]}]}]}
    root = write_rc_data(tmp_path, {"coqa": ("coqa/coqa-dev-v1.0.json", coqa), "drop": ("drop/drop_dataset_dev.json", drop),
                                    "quac": ("quac/val_v0.2.json", quac), "squad_v2": ("squad_v2/dev-v2.0.json", squad)})
    figures = {
        "coqa": (3, HELSINKI + "\n\nQ: what is the most populous municipality in Finland?\n\nA: Helsinki\n\nQ: how many people live there?\n\n"
                 "A: 1.4 million in the metropolitan area\n\nQ: what percent of the foreign companies that operate in Finland are in Helsinki?\n\n"
                 "A: 75%\n\nQ: what towns are a part of the metropolitan area?\n\nA:", " Helsinki, Espoo, Vantaa, Kauniainen, and surrounding commuter towns"),
        "drop": (0, f"Passage: {BREBEUF}\nQuestion: How many years did Saint Jean de Brébeuf stay in New France before he went back to France for a few years?\nAnswer:", " 4"),
        "quac": (0, "TITLE: William Perry (American football) - Professional career\nPARAGRAPH: In 1985, he was selected in the first round of "
                 "the 1985 NFL Draft by the Chicago Bears.\n\nQ: what team did he play for?\n\nA:", " the Chicago Bears"),
        "squad_v2": (0, "Title: The Blitz\n\nBackground: From the German point of view, March 1941 saw an improvement.\n\n"
                     "Q: When did the Luftwaffe fly inland missions?\n\nA:", " only on moonlit nights"),
    }
    for task, (index, context, target) in figures.items():
        p = build_prompt(prepare(load_task(task), Settings(data_dir=str(root))), index, 0, 1234, NoContextLimit())
        assert (p.context, p.target) == (context, target), task


# --- the readers' flattening -------------------------------------------------------------------------------------

def test_coqa_turn_i_sees_the_earlier_turns_with_their_answers(rc_data):
    from icl_eval.formats_rc import read_coqa

    docs = read_coqa(rc_data / "coqa/coqa-dev-v1.0.json")
    assert [d["id"] for d in docs] == ["s1#1", "s1#2", "s1#3", "s2#1", "s2#2", "s2#3"]
    assert [len(d["history"]) for d in docs] == [0, 1, 2, 0, 1, 2]
    assert docs[2]["history"] == [{"question": "What does Tom have?", "answer": "a dog"}, {"question": "What color is it?", "answer": "red"}]
    assert docs[3]["history"] == []  # a new story starts a new conversation
    assert docs[0]["answers"] == ["a dog", "a red dog", "dog"] and docs[1]["answers"] == ["red", "Red"]
    assert docs[5]["answer"] == "unknown"  # CoQA's unanswerable turns keep their answer


def test_quac_history_strips_the_paragraph_marker_and_keeps_cannotanswer(rc_data):
    from icl_eval.formats_rc import read_quac

    docs = read_quac(rc_data / "quac/val_v0.2.json")
    assert [len(d["history"]) for d in docs] == [0, 1, 2, 0, 1, 0]
    assert all("CANNOTANSWER" not in d["context"] for d in docs)
    assert docs[2]["answer"] == "CANNOTANSWER" and docs[2]["answers"] == ["CANNOTANSWER"]
    # The history shows the teacher's reply (orig_answer); the references add the other annotators' answers.
    assert docs[4]["answer"] == "She studied mathematics." and docs[4]["answers"] == ["She studied mathematics.", "mathematics"]
    assert docs[0]["title"] == "William Perry (American football)" and docs[0]["section_title"] == "Professional career"


def test_drop_answers_numbers_spans_and_dates(rc_data):
    from icl_eval.formats_rc import read_drop

    docs = read_drop(rc_data / "drop/drop_dataset_dev.json")
    assert [(d["answer"], d["answers"]) for d in docs] == [
        ("4", ["4", "four"]), ("1629", ["1629"]), ("the Lions, the Packers", ["the Lions, the Packers", "Lions, Packers"]),
        ("The Bears", ["The Bears", "Bears"]), ("16 March 1985", ["16 March 1985"])]
    assert [d["passage_id"] for d in docs] == ["history_1", "history_1", "nfl_2", "nfl_2", "nfl_2"]


def test_squad_unanswerable_questions_answer_unanswerable(rc_data):
    from icl_eval.formats_rc import read_squad_v2

    docs = read_squad_v2(rc_data / "squad_v2/dev-v2.0.json")
    assert [d["is_impossible"] for d in docs] == [False, True, False, False, True]
    assert docs[1]["answer"] == "unanswerable" and docs[1]["answers"] == ["unanswerable"]
    assert docs[0]["answers"] == ["4,000", "4,000 sorties"]  # duplicates of one answer are one reference
    # Scoring: "unanswerable" is the only accepted answer of a no-answer question.
    from icl_eval.metrics import exact_match, token_f1

    assert exact_match("Unanswerable.", docs[1]["answers"]) == 1.0 and token_f1("The Luftwaffe", docs[1]["answers"]) == 0.0


# --- the hub layouts give the same prompts ---------------------------------------------------------------------

def _hub_rows() -> dict[str, list[dict]]:
    coqa = [{"source": s["source"], "story": s["story"], "questions": [q["input_text"] for q in s["questions"]],
             "answers": {"input_text": [a["input_text"] for a in s["answers"]], "answer_start": [0] * 3, "answer_end": [0] * 3}} for s in COQA["data"]]
    quac = []
    for sec in QUAC["data"]:
        for para in sec["paragraphs"]:
            quac.append({"dialogue_id": para["id"], "wikipedia_page_title": sec["title"], "background": sec.get("background", ""),
                         "section_title": sec["section_title"], "context": para["context"], "turn_ids": [t["id"] for t in para["qas"]],
                         "questions": [t["question"] for t in para["qas"]], "followups": [0] * len(para["qas"]), "yesnos": [2] * len(para["qas"]),
                         "answers": {"texts": [[a["text"] for a in t["answers"]] for t in para["qas"]], "answer_starts": [[0] for _ in para["qas"]]},
                         "orig_answers": {"texts": [t["orig_answer"]["text"] for t in para["qas"]], "answer_starts": [0] * len(para["qas"])}})
    # ucinlp/drop: validation rows keep only the validated answers, each span its own entry; here the rows'
    # validated answers equal the original one where the local file has any.
    drop = [{"section_id": pid, "query_id": qa["query_id"], "passage": sec["passage"], "question": qa["question"],
             "answers_spans": {"spans": [_drop_text(qa["answer"])], "types": ["number"]}} for pid, sec in DROP.items() for qa in sec["qa_pairs"]]
    squad = [{"id": qa["id"], "title": art["title"], "context": para["context"], "question": qa["question"],
              "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
             for art in SQUAD["data"] for para in art["paragraphs"] for qa in para["qas"]]
    return {"stanfordnlp/coqa": coqa, "allenai/quac": quac, "ucinlp/drop": drop, "rajpurkar/squad_v2": squad}


@pytest.mark.parametrize("task", RC_TASKS)
def test_hub_rows_give_the_local_prompts(task, rc_data, tmp_path, monkeypatch):
    import datasets

    rows = _hub_rows()
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None, **kw: rows[path])
    monkeypatch.setattr("icl_eval.data.hub_reachable", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = prepare(load_task(task), Settings(data_dir=str(tmp_path / "empty")))
    local = prepare(load_task(task), Settings(data_dir=str(rc_data)))
    assert hub.source.startswith("hub:") and not local.source.startswith("hub:")
    assert len(hub.docs) == len(local.docs)
    for index in range(len(local.docs)):
        for shots in (0, 1, 3):
            h, l = (build_prompt(p, index, shots, 1234, NoContextLimit()) for p in (hub, local))
            assert (h.context, h.target) == (l.context, l.target), (index, shots)
    if task in ("coqa", "squad_v2"):  # the same accepted answers too (CoQA's hub copy lacks the additional answers)
        refs = [set(hub.example(i).references) <= set(local.example(i).references) for i in range(len(local.docs))]
        assert all(refs)


# --- end to end on a tiny random model ----------------------------------------------------------------------------

def test_every_rc_task_runs_end_to_end(tiny_checkpoint, rc_data, tmp_path, capsys):
    short = tmp_path / "short"
    short.mkdir()
    for name in RC_TASKS:  # few new tokens: a random model seldom stops early; the rest of the task is the built-in one
        raw = yaml.safe_load((builtin_dir("tasks") / f"{name}.yaml").read_text(encoding="utf-8"))
        (short / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "max_new_tokens": 3}), encoding="utf-8")
    argv = ["run", "--model", str(tiny_checkpoint), "--tasks", ",".join(RC_TASKS), "--shots", "0,1", "--data-dir", str(rc_data),
            "--include-path", str(short), "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    results = Path(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads(results.read_text())
    got = {(r["task"], r["shots"], r["metric"]): r for r in res["records"]}
    expected_n = {t: len(EXPECTED[t]()) for t in RC_TASKS}
    for task in RC_TASKS:
        for k in (0, 1):
            for metric in ("f1", "exact_match"):
                rec = got[(task, k, metric)]
                assert rec["n"] == expected_n[task] and 0.0 <= rec["value"] <= 1.0
            samples = [json.loads(x) for x in (results.parent / "samples" / f"{task}_{k}shot.jsonl").read_text().splitlines()]
            assert [s["references"] for s in samples] == [e[2] for e in EXPECTED[task]()]
            assert all(len(s["fewshot_ids"]) == k for s in samples)
