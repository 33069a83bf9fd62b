"""Task files, data loading and prompt rendering for the core tasks."""

from __future__ import annotations

import json

import pytest

from icl_eval import data, generators
from icl_eval.errors import IclEvalError
from icl_eval.evaluator import Settings, prepare
from icl_eval.prompts import assemble, render_example
from icl_eval.registry import discover, load_task

ARITHMETIC = ["2da", "2ds", "3da", "3ds", "4da", "4ds", "5da", "5ds", "2dm", "1dc"]


def test_all_core_tasks_are_registered():
    tasks = discover()
    for suffix in ARITHMETIC:
        assert tasks[f"arithmetic_{suffix}"].metrics == ("acc",)
    assert set(tasks["lambada"].metrics) == {"acc", "perplexity"}
    assert "lambada_cloze" in tasks


def test_generated_arithmetic_follows_the_papers_format():
    docs = generators.arithmetic(seed=1, op="minus", digits=2)
    assert len(docs) == 2000
    for d in docs[:50]:
        q = d["context"].removeprefix("\n\nQ: What is ").removesuffix("?\n\nA:")
        a, _, b = q.split(" ")
        assert 0 <= int(a) < 100 and 0 <= int(b) < 100
        assert d["completion"] == f" {int(a) - int(b)}"
    assert docs == generators.arithmetic(seed=1, op="minus", digits=2)
    three = generators.arithmetic(seed=1, op="three_ops")[0]["context"]
    assert three.startswith("\n\nQ: What is (") and three.endswith("?\n\nA:")


def test_arithmetic_runs_without_any_data():
    prep = prepare(load_task("arithmetic_5ds"), Settings(limit=3))
    assert prep.source == "generated:arithmetic" and len(prep.docs) == 2000


def test_zero_shot_prompt_is_the_files_context(shared):
    task = load_task("arithmetic_2da")
    prep = prepare(task, Settings(data_dir=str(shared / "data")))
    first = json.loads((shared / "data/gpt3/two_digit_addition.jsonl").read_text().splitlines()[0])
    inp, tgt = render_example(task, prep.docs[0])
    assert assemble(task.description, [], inp, task.fewshot_delimiter, task.target_delimiter) == first["context"]
    assert task.target_delimiter + tgt == first["completion"]


def test_lambada_split_from_shared_data(shared):
    task = load_task("lambada")
    docs = data.load_docs(task, str(shared / "data"))
    assert len(docs) == 5153
    inp, tgt = render_example(task, docs[0])
    assert inp + " " + tgt == docs[0]["text"] and " " not in tgt


def test_lambada_from_inline_local_file(tmp_path):
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada/lambada_test.jsonl").write_text(json.dumps({"text": "one two three"}) + "\n" + json.dumps({"text": "four five"}) + "\n")
    task = load_task("lambada_cloze")
    docs = data.load_docs(task, str(tmp_path))
    assert render_example(task, docs[0]) == ("Fill in blank: one two _____. ->", "three")


def test_missing_data_names_hub_and_local_path(tmp_path):
    with pytest.raises(IclEvalError) as e:
        data.load_docs(load_task("lambada"), str(tmp_path))
    msg = str(e.value)
    assert "EleutherAI/lambada_openai" in msg and str(tmp_path / "lambada/lambada_test.jsonl") in msg


def test_bad_json_line_is_named(tmp_path):
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada/lambada_test.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(IclEvalError, match=r"lambada_test.jsonl:2: not valid JSON"):
        data.load_docs(load_task("lambada"), str(tmp_path))


def test_env_var_data_dir(tmp_path, monkeypatch):
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada/lambada_test.jsonl").write_text(json.dumps({"text": "a b"}) + "\n")
    monkeypatch.setenv("ICL_EVAL_DATA_DIR", str(tmp_path))
    assert data.load_docs(load_task("lambada"), None) == [{"text": "a b"}]


def test_few_shot_prompt_joins_demonstrations():
    task = load_task("arithmetic_2da")
    prep = prepare(task, Settings())
    from icl_eval.evaluator import build_prompt
    from icl_eval.evaluator import NoContextLimit

    p = build_prompt(prep, 0, 2, 1234, NoContextLimit())
    demos = [prep.docs[i] for i in p.fewshot_ids]
    expected = "".join(d["context"] + d["completion"] for d in demos) + prep.docs[0]["context"]
    assert p.context == expected and p.target == prep.docs[0]["completion"]
