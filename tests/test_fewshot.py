"""Demonstrations: seeded per (task, seed, doc id), independent of order and --limit, never the example itself."""

from __future__ import annotations

import dataclasses

import pytest

from icl_eval import fewshot
from icl_eval.errors import IclEvalError


def test_draw_is_deterministic_and_excludes_the_example():
    for doc_id in range(50):
        ids = fewshot.draw("t", 1, doc_id, 5, 20, same_split=True)
        assert ids == fewshot.draw("t", 1, doc_id, 5, 20, same_split=True)
        assert doc_id not in ids and len(set(ids)) == 5 and all(0 <= i < 20 for i in ids)


def test_draw_depends_on_task_seed_and_doc():
    base = fewshot.draw("t", 1, 3, 8, 1000, True)
    assert base != fewshot.draw("u", 1, 3, 8, 1000, True)
    assert base != fewshot.draw("t", 2, 3, 8, 1000, True)
    assert base != fewshot.draw("t", 1, 4, 8, 1000, True)


def test_separate_pool_may_contain_any_index():
    seen = set()
    for doc_id in range(200):
        seen.update(fewshot.draw("t", 0, doc_id, 2, 3, same_split=False))
    assert seen == {0, 1, 2}


def test_every_pool_member_but_self_when_k_is_the_whole_pool():
    assert sorted(fewshot.draw("t", 0, 2, 4, 5, True)) == [0, 1, 3, 4]


def test_k_larger_than_pool_is_a_clear_error():
    with pytest.raises(IclEvalError, match="larger than the few-shot pool"):
        fewshot.draw("t", 0, 0, 5, 5, same_split=True)


def test_limit_subset_is_seeded_and_stable():
    a = fewshot.subset("t", 1, 1000, 10)
    assert a == fewshot.subset("t", 1, 1000, 10) and len(set(a)) == 10 and a == sorted(a)
    assert a != fewshot.subset("t", 2, 1000, 10)
    assert fewshot.subset("t", 1, 5, 10) == list(range(5))
    assert fewshot.subset("t", 1, 5, None) == list(range(5))


def test_demonstrations_do_not_depend_on_limit(tiny_gpt2_model, gpt2_tokenizer, tmp_path):
    """The same document gets the same demonstrations whether evaluated among 5 or 50."""
    from conftest import make_hf_model
    from icl_eval.evaluator import Settings, build_prompt, prepare
    from icl_eval.registry import load_task

    task = load_task("arithmetic_2da")
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    small = prepare(task, Settings(limit=5, seed=7))
    big = prepare(task, Settings(limit=50, seed=7))
    common = set(small.doc_ids) & set(big.doc_ids) or {small.doc_ids[0]}
    for d in common:
        assert build_prompt(small, d, 4, 7, hf) == build_prompt(big, d, 4, 7, hf)


def test_demonstrations_never_come_from_the_examples_own_group(tmp_path):
    """CoQA-style data: the turns of one story are documents of one group; no demonstration of a turn may be another
    turn of its story (a later turn's history holds the question and its answer)."""
    import json

    from icl_eval.evaluator import NoContextLimit, Settings, build_prompt, prepare
    from icl_eval.registry import load_task

    (tmp_path / "t.yaml").write_text(
        "name: t\noutput_type: generate\ntemplate: t.jinja\nmetrics: [exact_match]\nfewshot_group: story\ndata:\n  local: t.jsonl\n"
    )
    (tmp_path / "t.jinja").write_text("{% block input %}{{ q }}{% endblock %}{% block target %}{{ a }}{% endblock %}")
    docs = [{"story": s, "q": f"q{s}.{t}", "a": f"a{s}.{t}"} for s in range(6) for t in range(5)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = load_task(str(tmp_path / "t.yaml"))
    prep = prepare(task, Settings(shots=(8,), data_dir=str(tmp_path)))
    for doc_id in range(len(docs)):
        p = build_prompt(prep, doc_id, 8, 1234, NoContextLimit())
        assert len(p.fewshot_ids) == 8
        assert all(docs[i]["story"] != docs[doc_id]["story"] for i in p.fewshot_ids), doc_id
    # Without the key the same draw may pick the story's own turns (which is why the key exists).
    plain = prepare(dataclasses.replace(task, fewshot_group=None), Settings(shots=(8,), data_dir=str(tmp_path)))
    assert any(docs[i]["story"] == docs[d]["story"] for d in range(len(docs)) for i in build_prompt(plain, d, 8, 1234, NoContextLimit()).fewshot_ids)
