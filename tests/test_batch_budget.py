"""The batch budget: the CPU token budget is measured (and remembered), and an out-of-memory never raises it."""

from __future__ import annotations

import json

import pytest

from icl_eval import batching
from icl_eval.batching import BatchBudget, cpu_forward_cost, cpu_token_budget, plan_batches
from icl_eval.data import MappedDocs
from icl_eval.errors import IclEvalError
from icl_eval.requests import LoglikelihoodRequest


def test_oom_never_raises_a_budget_below_the_context_window():
    # a CPU's measured budget (2048) under an 8192-token context: halving must not lift it to the floor
    budget = BatchBudget(max_rows=None, tokens=2048, floor=8192)
    budget.shrink_after_oom(RuntimeError("out of memory"), rows=4)
    assert budget.tokens == 2048 and budget.max_rows == 2
    big = BatchBudget(max_rows=None, tokens=32768, floor=8192)
    big.shrink_after_oom(RuntimeError("out of memory"), rows=4)
    assert big.tokens == 16384


def test_cpu_budget_is_measured_once_and_remembered(tmp_path, monkeypatch):
    store = tmp_path / "budget.json"
    got = cpu_token_budget(64, 256, store)
    assert got in batching._PROBE_TOKENS
    key, = json.loads(store.read_text())
    assert "64x256" in key
    monkeypatch.setattr(batching, "_PROBE_TOKENS", ())  # a second probe would fail: the stored answer is used
    assert cpu_token_budget(64, 256, store) == got


def test_cpu_budget_survives_an_unreadable_store(tmp_path):
    store = tmp_path / "budget.json"
    store.write_text("{not json")
    assert cpu_token_budget(32, 64, store) in batching._PROBE_TOKENS


def _padded(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_filled_batches_pad_short_rows_to_a_long_one():
    lengths = [285] + [130] * 6
    assert plan_batches(lengths, None, 2048) == [list(range(7))]  # 7 x 285 fits 2048: 825 tokens of padding


def test_a_forward_cost_cuts_batches_where_padding_costs_more():
    lengths = [285] + [130] * 6
    assert plan_batches(lengths, None, 2048, forward_cost=30) == [[0], [1, 2, 3, 4, 5, 6]]
    assert plan_batches(lengths, None, 2048, forward_cost=2000) == [list(range(7))]  # a forward dearer than the padding


@pytest.mark.parametrize("max_rows,budget", [(None, 2048), (4, 2048), (None, 200), (3, None)])
def test_planned_batches_partition_longest_first_within_budget(max_rows, budget):
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(300)]
    for cost in (None, 0, 30):
        batches = plan_batches(lengths, max_rows, budget, forward_cost=cost)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        flat = [lengths[i] for b in batches for i in b]
        assert flat == sorted(flat, reverse=True)  # the longest (an OOM's likeliest) batch runs first
        for b in batches:
            assert max_rows is None or len(b) <= max_rows
            assert budget is None or len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
        if cost is not None and budget is not None:
            filled = plan_batches(lengths, max_rows, budget)
            assert _padded(lengths, batches) + cost * len(batches) <= _padded(lengths, filled) + cost * len(filled)
    if budget is not None:  # forwards cost nothing: no padding at all
        assert _padded(lengths, plan_batches(lengths, max_rows, budget, forward_cost=0)) == sum(lengths)


def test_forward_cost_is_the_fixed_time_over_the_time_per_token(tmp_path, monkeypatch):
    fixed, per_token = 0.02, 0.0005  # seconds: a forward costs what 40 tokens cost
    clock = [0.0]
    monkeypatch.setattr("time.perf_counter", lambda: clock[0])

    def forward(n):
        clock[0] += fixed + n * per_token

    store = tmp_path / "budget.json"
    assert cpu_forward_cost(forward, "tiny 123", store) == 40
    assert cpu_forward_cost(lambda n: pytest.fail("measured twice"), "tiny 123", store) == 40  # remembered
    assert any(k.startswith("forward tiny 123 threads=") for k in json.loads(store.read_text()))


def test_plain_field_names_map_as_the_expression_would():
    docs = [{"q": "a?", "answers": ["x", "y"]}]
    assert list(MappedDocs(docs, {"question": "q", "answers": "answers", "n": "answers | length"}, "t")) == [{"question": "a?", "answers": ["x", "y"], "n": 2}]
    with pytest.raises(IclEvalError, match="example 0"):
        MappedDocs(docs, {"question": "missing"}, "t")


def test_documents_are_mapped_when_read_and_a_bad_record_names_its_index():
    import pickle

    docs = MappedDocs([{"q": "a"}, {"q": "b"}, {"x": "no q"}], {"question": "q ~ '?'"}, "t")
    assert len(docs) == 3 and docs[1] == {"question": "b?"} and docs[:2] == [{"question": "a?"}, {"question": "b?"}]
    with pytest.raises(IclEvalError, match=r"t\.question: example 2: .*the record's fields are: x"):
        docs[-1]
    assert pickle.loads(pickle.dumps(MappedDocs([{"q": "a"}], {"question": "q"}, "t"))) == [{"question": "a"}]


def test_a_cpu_model_plans_with_its_measured_forward_cost(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    from conftest import make_hf_model

    auto = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    assert isinstance(auto.budget.forward_cost, int) and auto.budget.forward_cost >= 0
    assert make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4).budget.forward_cost is None  # rows as given
    calls = []
    real = batching.plan_batches
    monkeypatch.setattr(batching, "plan_batches", lambda *a: calls.append(a) or real(*a))
    auto.loglikelihood([LoglikelihoodRequest("a b c", " d"), LoglikelihoodRequest("e f g h i j", " k")])
    assert calls and all(a[3] == auto.budget.forward_cost for a in calls)


def test_a_model_that_refuses_the_probe_forward_keeps_filled_batches(gpt2_tokenizer, monkeypatch, tmp_path):
    from conftest import make_hf_model

    from icl_eval.models.tiny import tiny_gpt2

    model = tiny_gpt2(len(gpt2_tokenizer), n_positions=64, seed=11)
    real = model.forward

    def old_forward(*args, **kwargs):
        if "logits_to_keep" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", old_forward)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing remembered
    assert make_hf_model(model, gpt2_tokenizer).budget.forward_cost is None


def test_a_cpu_budget_keeps_the_fixed_cost_of_a_forward_under_a_tenth():
    assert batching.efficient_forward(256, 61) == 549  # Gemma 3 270M at two threads: 61 / (549 + 61) = 10%
    assert batching.efficient_forward(2048, 34) == 2048  # SmolLM2: the matmul probe's budget is larger already
    assert batching.efficient_forward(256, None) == 256
