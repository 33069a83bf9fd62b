"""The multiple-choice rules through the evaluator: acc_norm divides by the choice text the task defines
(lm-evaluation-harness's definition), for full and for partial scoring."""

from __future__ import annotations

import dataclasses

import pytest

from icl_eval.evaluator import Settings, prepare, score_task
from icl_eval.registry import load_task
from icl_eval.requests import LoglikelihoodResult
from fakes import table_model
from tasks_inline_data import write_inline_data


@pytest.fixture(scope="module")
def inline_root(tmp_path_factory):
    return write_inline_data(tmp_path_factory.mktemp("inline_choice"))


def _samples(task, model, root):
    settings = Settings(shots=(0,), data_dir=str(root))
    run = score_task(prepare(task, settings), 0, model, settings)
    _, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    return {s["doc_id"]: s for s in samples}


def test_piqa_acc_norm_uses_the_solution_text_not_the_continuation(inline_root):
    # "Put it in rice." has 15 characters, " Put it in rice." 16; "Put it in water." 16 and 17.
    # lm-eval: -15/15 < -15.97/16, so solution 2; the old per-continuation rule: -15/16 > -15.97/17, solution 1.
    model = table_model({("How do I dry a wet phone?", " Put it in rice."): -15.0, ("How do I dry a wet phone?", " Put it in water."): -15.97})
    task = dataclasses.replace(load_task("piqa"), metrics=("acc", "acc_norm", "acc_norm_token"))
    s = _samples(task, model, inline_root)[0]
    assert s["predictions"] == {"acc": 0, "acc_norm": 1, "acc_norm_token": 0}
    # The log lets anyone recompute acc_norm: the candidate's text is the divisor; n_chars is the scored continuation.
    assert [c["text"] for c in s["candidates"]] == [" Put it in rice.", " Put it in water."]  # the exact continuations scored
    assert [c["n_chars"] for c in s["candidates"]] == [16, 17]


def test_partial_scoring_acc_norm_divides_by_each_option_context_as_lm_eval(inline_root):
    # lm-eval's Winogrande choices are `sentence[:blank] + option`: 45 and 43 characters here. The shared
    # continuation's log-likelihood -4.4 / 45 beats -4.3 / 43, so acc_norm picks option 1 while acc picks 2;
    # acc_norm_token divides the same continuation's tokens for both options, so it agrees with acc.
    model = table_model({("as the trophy", " was too big."): -4.4, ("as the case", " was too big."): -4.3})
    task = dataclasses.replace(load_task("winogrande"), metrics=("acc", "acc_norm", "acc_norm_token"))
    s = _samples(task, model, inline_root)[3]
    assert [len(c["context"]) for c in s["candidates"]] == [45, 43]  # 0-shot: each option's own context
    assert s["predictions"] == {"acc": 1, "acc_norm": 0, "acc_norm_token": 1}
