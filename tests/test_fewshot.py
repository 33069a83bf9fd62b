"""Demonstrations: seeded per (task, seed, doc id), independent of order and --limit, never the example itself."""

from __future__ import annotations

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
