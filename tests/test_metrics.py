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


# --- Multiple-choice rules: acc_norm is lm-evaluation-harness's, acc_norm_token the GPT-3 paper's ---------------


def _lm_eval_acc_norm_pick(lls: list[float], choices: list[str]) -> int:
    """lm-eval 0.4 ConfigurableTask.process_results (multiple_choice), restated: the log-likelihood divided by the
    length of the choice text as doc_to_choice gives it, i.e. without the target delimiter."""
    import numpy as np

    completion_len = np.array([float(len(c)) for c in choices])
    return int(np.argmax(np.array(lls) / completion_len))


def _mc_results(lls: list[float], choices: list[str], n_tokens: list[int], delim: str = " ") -> list[LoglikelihoodResult]:
    # What a backend returns: n_chars is the scored continuation's length, target delimiter included.
    return [LoglikelihoodResult(ll, t, len(delim + c), False) for ll, c, t in zip(lls, choices, n_tokens)]


def test_acc_norm_divides_by_the_choice_without_the_delimiter_as_lm_eval():
    # Per character of " ab" / " abcdef" (the old rule) choice 0 wins: -1/3 > -2.6/7. Per character of the choice
    # itself (lm-eval) choice 1 wins: -2.6/6 > -1/2.
    choices, lls = ["ab", "abcdef"], [-1.0, -2.6]
    preds = metrics.choice_predictions(_mc_results(lls, choices, [1, 2]), choices)
    assert _lm_eval_acc_norm_pick(lls, choices) == 1
    assert preds["acc_norm"] == 1
    assert preds["acc"] == 0


def test_acc_norm_matches_lm_eval_on_many_random_examples():
    import random

    rng = random.Random(0)
    for _ in range(500):
        k = rng.randint(2, 5)
        choices = ["x" * rng.randint(1, 30) for _ in range(k)]
        lls = [-rng.uniform(0.1, 40.0) for _ in range(k)]
        preds = metrics.choice_predictions(_mc_results(lls, choices, [1] * k), choices)
        assert preds["acc_norm"] == _lm_eval_acc_norm_pick(lls, choices)


def test_acc_norm_token_divides_by_the_scored_tokens():
    # Sum: choice 0; per choice character: choice 0 (-2/4 > -3/5); per token: choice 1 (-3/3 > -2/1).
    choices, lls = ["four", "fives"], [-2.0, -3.0]
    preds = metrics.choice_predictions(_mc_results(lls, choices, [1, 3]), choices)
    assert preds == {"acc": 0, "acc_norm": 0, "acc_norm_token": 1}
    assert "acc_norm_token" in metrics.METRICS and metrics.METRICS["acc_norm_token"].output_types == ("multiple_choice",)


def test_acc_uncond_subtracts_the_unconditional_loglikelihood():
    choices = ["a", "b"]
    cond = _mc_results([-2.0, -3.0], choices, [1, 1])
    uncond = _mc_results([-1.0, -5.0], choices, [1, 1])
    assert metrics.choice_predictions(cond, choices, uncond)["acc_uncond"] == 1


def test_choice_predictions_need_one_choice_per_result():
    with pytest.raises(ValueError):
        metrics.choice_predictions(_mc_results([-1.0, -2.0], ["a", "b"], [1, 1]), ["a"])


def test_every_metric_says_whether_higher_is_better():
    assert all(isinstance(m.higher_is_better, bool) for m in metrics.METRICS.values())
    lower = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"}
    assert {name for name, m in metrics.METRICS.items() if not m.higher_is_better} == lower


# --- Perplexity in log space: document-level log-likelihoods far below -709 must not overflow ------------------


@pytest.mark.parametrize("ll", [-800.0, -5000.0])
def test_perplexity_of_very_low_loglikelihoods_is_inf_not_an_overflow(ll):
    value, se = metrics.aggregate("perplexity", [ll, ll])
    assert value == math.inf
    assert se == 0.0  # identical items: no spread
    value, se = metrics.aggregate("perplexity", [ll])
    assert value == math.inf and se is None
    value, se = metrics.aggregate("perplexity", [ll, ll - 2.0])
    assert value == math.inf and se == math.inf
    assert metrics.value("perplexity", [ll, ll + 1.0]) == math.inf


def test_perplexity_stderr_is_computed_in_log_space():
    # mean ll -700.5 (perplexity e^700.5, finite); stderr of the mean 0.5; delta method: e^700.5 * 0.5.
    value, se = metrics.aggregate("perplexity", [-700.0, -701.0])
    assert value == pytest.approx(math.exp(700.5))
    assert se == pytest.approx(math.exp(700.5) * 0.5)
    # Past e^709.78 the perplexity is inf, but its delta-method stderr e^(-mean + log se) can still be a float.
    value, se = metrics.aggregate("perplexity", [-710.0, -710.0 + 2e-3])
    assert value == math.inf
    assert math.isfinite(se) and se == pytest.approx(math.exp(709.999 + math.log(1e-3)))
    assert math.isnan(metrics.aggregate("perplexity", [])[0])
