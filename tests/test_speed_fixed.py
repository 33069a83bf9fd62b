"""--fewshot-mode fixed: one seeded demonstration set per task and K, its prefix forwarded once, same scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_hf_model
from icl_eval import fewshot
from icl_eval.cli import main
from icl_eval.evaluator import Settings, build_prompt, prepare, score_task
from icl_eval.registry import load_task


def test_fixed_set_is_shared_seeded_and_never_the_example():
    sets = {d: fewshot.draw_fixed("t", 1, d, 5, 30, same_split=True) for d in range(30)}
    common = fewshot.draw_fixed("t", 1, 10**6, 5, 30, same_split=True)  # a doc id outside the pool: the plain set
    members = set(common)
    for d, ids in sets.items():
        assert len(ids) == 5 and d not in ids and len(set(ids)) == 5
        if d not in members:
            assert ids == common
        else:  # the example's slot goes to the spare; the rest keep their order
            assert [i for i in ids if i in members] == [i for i in common if i != d]
    assert fewshot.draw_fixed("t", 2, 0, 5, 30, True) != fewshot.draw_fixed("t", 1, 0, 5, 30, True)
    assert fewshot.draw_fixed("t", 1, 0, 4, 30, False) == fewshot.draw_fixed("t", 1, 99, 4, 30, False)
    assert fewshot.draw_fixed("t", 1, 0, 0, 30, True) == []


def test_fixed_mode_scores_equal_unshared_and_forward_the_prefix_once(tiny_gpt2_model, gpt2_tokenizer):
    task = load_task("arithmetic_2da")
    settings = Settings(shots=(8,), seed=3, limit=12, fewshot_mode="fixed")
    prep = prepare(task, settings)
    shared = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4)
    plain = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4, share_prefixes=False)
    a = [s.to_json() for s in score_task(prep, 8, shared, settings).samples]
    b = [s.to_json() for s in score_task(prep, 8, plain, settings).samples]
    assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
    assert len({tuple(s["fewshot_ids"]) for s in a}) <= 2  # one set (plus, rarely, an example that was in it)
    for x, y in zip(a, b):
        assert x["loglikelihood"] == pytest.approx(y["loglikelihood"], abs=1e-4) and x["is_greedy"] == y["is_greedy"]
    # The demonstrations are forwarded once instead of once per example.
    assert shared.tokens_forwarded < plain.tokens_forwarded / 3


def test_per_example_stays_the_default(tiny_gpt2_model, gpt2_tokenizer):
    task = load_task("arithmetic_2da")
    prep = prepare(task, Settings(limit=6, seed=3))
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    ids = {build_prompt(prep, d, 4, 3, hf).fewshot_ids for d in prep.doc_ids}
    assert len(ids) == len(prep.doc_ids)


def test_cli_records_the_mode(tiny_checkpoint, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2ds", "--shots", "3", "--limit", "4", "--fewshot-mode", "fixed", "--output", str(tmp_path)]) == 0
    results = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(results.read_text())["settings"]["fewshot_mode"] == "fixed"
    samples = [json.loads(x) for x in (results.parent / "samples/arithmetic_2ds_3shot.jsonl").read_text().splitlines()]
    assert len({tuple(s["fewshot_ids"]) for s in samples}) <= 2
