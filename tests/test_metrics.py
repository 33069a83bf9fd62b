"""Metric functions are pure: check them on hand-computed values."""

from __future__ import annotations

import math

import pytest

from icl_eval import metrics
from icl_eval.requests import LoglikelihoodResult


def test_mean_and_stderr():
    value, se = metrics.aggregate("acc", [1.0, 0.0, 1.0, 1.0])
    assert value == 0.75
    assert se == pytest.approx(math.sqrt((3 * 0.25**2 + 0.75**2) / 3 / 4))
    assert metrics.aggregate("acc", [1.0])[1] is None


def test_perplexity_is_exp_of_negative_mean_loglikelihood():
    value, se = metrics.aggregate("perplexity", [-1.0, -3.0])
    assert value == pytest.approx(math.exp(2.0))
    assert se == pytest.approx(math.exp(2.0) * 1.0)  # stderr of the mean ll is 1.0 here
    assert not metrics.METRICS["perplexity"].higher_is_better


def test_loglikelihood_items():
    res = LoglikelihoodResult(-2.5, 2, 4, True)
    assert metrics.loglikelihood_item("acc", res) == 1.0
    assert metrics.loglikelihood_item("perplexity", res) == -2.5


@pytest.mark.parametrize("raw,norm", [("The  Eiffel Tower!", "eiffel tower"), ("an Apple, a day", "apple day"), ("  ", "")])
def test_normalize_answer(raw, norm):
    assert metrics.normalize_answer(raw) == norm


def test_exact_match_and_f1():
    assert metrics.exact_match("the Beatles.", ["Beatles", "The Fab Four"]) == 1.0
    assert metrics.exact_match("Rolling Stones", ["Beatles"]) == 0.0
    assert metrics.token_f1("paris france", ["Paris"]) == pytest.approx(2 / 3)
    assert metrics.token_f1("", [""]) == 1.0
    assert metrics.token_f1("x", ["y"]) == 0.0
