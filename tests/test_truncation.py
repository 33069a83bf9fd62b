"""A prompt too long for the model loses whole demonstrations from the front first, and the run counts it."""

from __future__ import annotations

from conftest import make_hf_model
from icl_eval.evaluator import Settings, build_prompt, prepare, score_task
from icl_eval.prompts import assemble, description_for
from icl_eval.registry import load_task


def test_demonstrations_drop_from_the_front(gpt2_tokenizer):
    from icl_eval.models.tiny import tiny_gpt2

    hf = make_hf_model(tiny_gpt2(len(gpt2_tokenizer), n_positions=64), gpt2_tokenizer)
    prep = prepare(load_task("arithmetic_2da"), Settings(limit=4))
    full = build_prompt(prep, prep.doc_ids[0], 8, 1234, type("Big", (), {"max_length": 10**6, "count_tokens": lambda s, t: 0})())
    fitted = build_prompt(prep, prep.doc_ids[0], 8, 1234, hf)
    assert fitted.demos_dropped > 0
    # The demonstrations kept are the last ones of the draw, in order: the front went first.
    assert fitted.fewshot_ids == full.fewshot_ids[fitted.demos_dropped:]
    assert full.context.endswith(fitted.context)
    assert hf.count_tokens(fitted.context) + hf.count_tokens(fitted.target) <= hf.max_length + 1
    # And no more than needed: keeping the last demonstration dropped would not fit.
    task = prep.task
    one_more = [prep.example(i, from_pool=True) for i in full.fewshot_ids[fitted.demos_dropped - 1 :]]
    longer = assemble(description_for(task, 8), one_more, prep.example(fitted.doc_id).input, task.fewshot_delimiter, task.target_delimiter)
    assert full.context.endswith(longer)
    assert hf.count_tokens(longer) + hf.count_tokens(fitted.target) > hf.max_length + 1


def test_truncation_counts_reach_the_results(gpt2_tokenizer):
    from icl_eval.models.tiny import tiny_gpt2

    hf = make_hf_model(tiny_gpt2(len(gpt2_tokenizer), n_positions=64), gpt2_tokenizer)
    prep = prepare(load_task("arithmetic_2da"), Settings(limit=6))
    run = score_task(prep, 8, hf, Settings(limit=6))
    records, samples, counts = run.records, [s.to_json() for s in run.samples], run.truncation
    assert counts["demos_dropped"] == 6 and counts["left_truncated"] == 0
    assert all(len(s["fewshot_ids"]) < 8 for s in samples)
    assert records[0].n == 6
