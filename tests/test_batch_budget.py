"""The batch budget: the CPU token budget is measured (and remembered), and an out-of-memory never raises it."""

from __future__ import annotations

import json

import pytest

from icl_eval import batching
from icl_eval.batching import BatchBudget, cpu_token_budget
from icl_eval.data import map_fields
from icl_eval.errors import IclEvalError


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


def test_plain_field_names_map_as_the_expression_would():
    docs = [{"q": "a?", "answers": ["x", "y"]}]
    assert map_fields(docs, {"question": "q", "answers": "answers", "n": "answers | length"}, "t") == [{"question": "a?", "answers": ["x", "y"], "n": 2}]
    with pytest.raises(IclEvalError, match="example 0"):
        map_fields(docs, {"question": "missing"}, "t")
