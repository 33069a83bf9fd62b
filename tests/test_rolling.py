"""Rolling log-likelihood: windows that score every token once, per-document sums against a plain forward loop,
and corpus perplexities that neither overflow nor lose their standard error."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_hf_model
from icl_eval.errors import IclEvalError
from icl_eval.models.hf_scoring import Scored
from icl_eval.requests import LoglikelihoodRequest, RollingRequest, RollingResult
from icl_eval.rolling import (
    bits_per_byte,
    byte_perplexity,
    corpus_metrics,
    count_bytes,
    count_words,
    count_words_and_line_ends,
    metric_items,
    ratio_stderr,
    rolling_windows,
    token_perplexity,
    word_perplexity,
)

PREFIX = -100


# --- lm-eval's semantics, re-derived per token ---------------------------------------------------
# lm-eval (utils.get_rolling_token_windows with context_len = max_len - stride + 1, then make_disjoint_window):
# the first window predicts tokens [0, max_len) after the prefix token; each later window predicts the next
# `stride` tokens (fewer at the end) in one forward pass over the max_len tokens before that window's end.
def lm_eval_chunks(n: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of the tokens each forward pass predicts."""
    bounds = [0, min(max_len, n)]
    while bounds[-1] < n:
        bounds.append(min(bounds[-1] + stride, n))
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def lm_eval_visible(n: int, max_len: int, stride: int) -> list[int]:
    """How many tokens (prefix included) the model reads when it predicts token i, for each i."""
    visible = []
    for start, end in lm_eval_chunks(n, max_len, stride):
        first_read = max(0, end - max_len)  # in prefix-padded coordinates; token i sits at i + 1
        visible += [i + 1 - first_read for i in range(start, end)]
    return visible


def test_windows_reproduce_lm_eval_documented_example():
    # lm-eval's own test case (34 tokens, max_seq_len 10, context_len 1), in the disjoint form it scores.
    assert rolling_windows(list(range(34)), PREFIX, 10) == [
        ([PREFIX], list(range(0, 10))),
        ([9], list(range(10, 20))),
        ([19], list(range(20, 30))),
        (list(range(23, 30)), list(range(30, 34))),
    ]
    # Overlapping windows (stride 3 = context_len 8): every window after the first scores 3 new tokens.
    w = rolling_windows(list(range(16)), PREFIX, 10, stride=3)
    assert [c for _, c in w] == [list(range(10)), [10, 11, 12], [13, 14, 15]]
    assert w[1][0] == list(range(2, 10)) and w[2][0] == list(range(5, 13))  # read [2, 12) and [5, 15)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 120), max_len=st.integers(1, 40), data=st.data())
def test_windows_score_every_token_once_with_the_true_left_context(n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    tokens = [1000 + i for i in range(n)]  # distinct, so a misplaced token shows
    padded = [PREFIX, *tokens]
    windows = rolling_windows(tokens, PREFIX, max_len, stride)
    assert [t for _, c in windows for t in c] == tokens  # each token once, in order
    visible, done = [], 0
    for context, continuation in windows:
        read = context + continuation[:-1]
        assert continuation and context and len(read) <= max_len
        end = done + len(continuation)
        assert read == padded[end - len(read) : end]  # exactly the tokens before the scored ones
        visible += [len(read) - (len(continuation) - 1 - k) for k in range(len(continuation))]
        done = end
    assert visible == lm_eval_visible(n, max_len, stride)
    if n > max_len:  # windows after the first read the full context
        assert all(len(c) + len(t) - 1 == max_len for c, t in windows[1:])
        assert min(visible[max_len:]) >= max_len - stride + 1


def test_bad_window_settings_name_the_fix():
    with pytest.raises(IclEvalError, match="stride 0 must be between 1 and the model's context length \\(8\\)"):
        rolling_windows([1, 2, 3], PREFIX, 8, stride=0)
    with pytest.raises(IclEvalError, match="stride 9"):
        rolling_windows([1, 2, 3], PREFIX, 8, stride=9)
    with pytest.raises(IclEvalError, match="context length must be at least 1"):
        rolling_windows([1], PREFIX, 0)


# --- against a plain forward loop with a tiny GPT-2 ------------------------------------------
def plain_rolling(torch_model, tokens: list[int], prefix: int, max_len: int, stride: int) -> float:
    """One forward pass per chunk of lm_eval_chunks, each on the max_len tokens before the chunk's end."""
    padded = [prefix, *tokens]
    total = 0.0
    with torch.no_grad():
        for start, end in lm_eval_chunks(len(tokens), max_len, stride):
            read = padded[max(0, end - max_len) : end]
            logprobs = torch.log_softmax(torch_model(input_ids=torch.tensor([read])).logits[0].float(), -1)
            positions = range(len(read) - (end - start), len(read))
            total += sum(logprobs[p, t].item() for p, t in zip(positions, tokens[start:end]))
    return total


DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 9 + "She held the torch in front of her and caught her breath.",
    " no it was n't black monday \n but while the new york stock exchange did n't fall apart friday \n",
    "",
    "naïve café résumé 東京",
]


@pytest.fixture(scope="module")
def small_context_model(tiny_gpt2_model, gpt2_tokenizer):
    return make_hf_model(tiny_gpt2_model, gpt2_tokenizer, max_length=32, batch_size=3)


@pytest.mark.parametrize("stride", [None, 32, 20, 1])
def test_document_sums_equal_a_plain_window_by_window_forward(small_context_model, tiny_gpt2_model, gpt2_tokenizer, stride):
    m = small_context_model
    results = m.loglikelihood_rolling([RollingRequest(t, stride) for t in DOCS])
    for text, r in zip(DOCS, results):
        ids = gpt2_tokenizer(text, add_special_tokens=False).input_ids
        assert r.n_tokens == len(ids) and r.finite
        assert r.loglikelihood == pytest.approx(plain_rolling(tiny_gpt2_model, ids, m.prefix_id, 32, stride or 32), abs=1e-4)
        assert (r.n_words, r.n_bytes) == (count_words(text), count_bytes(text))
    assert results[0].n_tokens > 3 * 32  # the long document really spans several windows and a partial one
    assert results[2] == RollingResult(0.0, 0, 1, 0, True)


def test_each_request_keeps_its_own_stride_in_one_call(small_context_model):
    reqs = [RollingRequest(DOCS[0], None), RollingRequest(DOCS[0], 20), RollingRequest(DOCS[0], 1), RollingRequest(DOCS[1], 5)]
    together = small_context_model.loglikelihood_rolling(reqs)
    alone = [small_context_model.loglikelihood_rolling([r])[0] for r in reqs]
    assert [r.loglikelihood for r in together] == pytest.approx([r.loglikelihood for r in alone], abs=1e-5)
    lls = [r.loglikelihood for r in together[:3]]
    assert min(abs(a - b) for a, b in [(lls[0], lls[1]), (lls[1], lls[2]), (lls[0], lls[2])]) > 1e-3  # strides change the windows


def test_one_window_equals_scoring_the_whole_document_as_a_continuation(tiny_gpt2_model, gpt2_tokenizer):
    m = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)  # context 512: every document fits one window
    rolled = m.loglikelihood_rolling([RollingRequest(t) for t in DOCS[:2]])
    whole = m.loglikelihood([LoglikelihoodRequest("", t) for t in DOCS[:2]])
    for r, w in zip(rolled, whole):
        assert r.loglikelihood == pytest.approx(w.loglikelihood, abs=1e-4) and r.n_tokens == w.n_tokens


def test_progress_and_results_arrive_once_per_document(small_context_model, gpt2_tokenizer):
    seen, ticks = {}, []
    out = small_context_model.loglikelihood_rolling([RollingRequest(t) for t in DOCS], on_result=seen.__setitem__, progress=lambda d, t: ticks.append((d, t)))
    assert seen == dict(enumerate(out))
    assert sum(d for d, _ in ticks) == len(DOCS)
    read = [len(c) + len(t) - 1 for text in DOCS for c, t in rolling_windows(gpt2_tokenizer(text).input_ids, 0, 32)]
    assert sum(t for _, t in ticks) == sum(read)  # every window is forwarded once


def test_a_window_with_nan_logits_flags_its_document(small_context_model, gpt2_tokenizer, monkeypatch):
    m = small_context_model
    second = rolling_windows(gpt2_tokenizer(DOCS[0]).input_ids, m.prefix_id, 32)[1]
    real = m._score_batch
    monkeypatch.setattr(m, "_score_batch", lambda rows: [Scored(math.nan, False, False) if (r.context, r.continuation) == second else s for r, s in zip(rows, real(rows))])
    out = m.loglikelihood_rolling([RollingRequest(DOCS[0]), RollingRequest(DOCS[3])])
    assert [r.finite for r in out] == [False, True]
    assert corpus_metrics(out) == corpus_metrics(out[1:])


def test_a_tokenizer_without_bos_or_eos_is_one_clear_error(small_context_model, monkeypatch):
    monkeypatch.setattr(small_context_model, "prefix_id", None)
    with pytest.raises(IclEvalError, match="neither a BOS nor an EOS token"):
        small_context_model.loglikelihood_rolling([RollingRequest("text")])


# --- counting and corpus metrics ---------------------------------------------------------------
def test_word_count_is_lm_evals_split_on_whitespace():
    assert count_words("a b  c") == 3
    assert count_words(" a b ") == 4  # lm-eval's re.split keeps the empty strings at both ends
    assert count_words("") == 1
    assert count_words_and_line_ends(" a b \n c \n") == 5
    assert count_bytes("é東") == 5


def test_ptb_test_set_counts_match_the_published_token_count(shared):
    text = (shared / "data" / "ptb" / "ptb.test.txt").read_text(encoding="utf-8")
    assert count_words_and_line_ends(text) == 82430


def test_metrics_are_ratios_of_sums_not_means_of_ratios():
    items = [(-10.0, 5), (-30.0, 5), (-8.0, 2)]  # R = -48 / 12 = -4
    assert word_perplexity(items)[0] == pytest.approx(math.exp(4))
    assert byte_perplexity(items)[0] == pytest.approx(math.exp(4))
    assert bits_per_byte(items)[0] == pytest.approx(4 / math.log(2))


def test_stderr_is_the_delta_method_over_documents():
    rng = np.random.default_rng(1)
    b = rng.integers(5, 50, size=40).astype(float)
    a = -b * 3.0 + rng.normal(0, 4, size=40)
    items = list(zip(a, b))
    r = a.sum() / b.sum()
    # the ratio's linearised variance, written the textbook way: var(a - R b) / (n * mean(b)^2)
    se = math.sqrt(np.var(a - r * b, ddof=1) / (len(a) * b.mean() ** 2))
    assert ratio_stderr(items) == pytest.approx((r, se))
    ppl, ppl_se = word_perplexity(items)
    assert ppl_se == pytest.approx(ppl * se)
    assert bits_per_byte(items)[1] == pytest.approx(se / math.log(2))
    # an exact ratio has no spread; one document has no stderr
    assert ratio_stderr([(-2.0, 1), (-4.0, 2), (-6.0, 3)])[1] == pytest.approx(0.0)
    assert word_perplexity([(-2.0, 1)])[1] is None
    # the delta method agrees with a bootstrap over documents at this size
    boot = [(lambda i: a[i].sum() / b[i].sum())(rng.integers(0, 40, 40)) for _ in range(4000)]
    assert ratio_stderr(items)[1] == pytest.approx(np.std(boot), rel=0.15)


def test_metrics_never_overflow():
    terrible = [(-1e6, 3), (-2e6, 4)]
    for fn in (word_perplexity, byte_perplexity, token_perplexity):
        value, se = fn(terrible)
        assert value == math.inf and se == math.inf
    assert bits_per_byte(terrible)[0] == pytest.approx(3e6 / 7 / math.log(2))
    huge = [(-1e300, 1), (1e300, 1), (-1e300, 3)]
    for fn in (word_perplexity, bits_per_byte):
        fn(huge)  # no OverflowError
    assert word_perplexity([(-math.inf, 3), (-1.0, 2)]) == (math.inf, None)
    assert math.isnan(word_perplexity([])[0]) and word_perplexity([])[1] is None
    assert math.isnan(word_perplexity([(0.0, 0)])[0])


def test_corpus_metrics_uses_every_count_of_the_result():
    results = [RollingResult(-12.0, 6, 3, 10, True), RollingResult(-8.0, 4, 2, 6, True)]
    m = corpus_metrics(results)
    assert m["word_perplexity"][0] == pytest.approx(math.exp(20 / 5))
    assert m["byte_perplexity"][0] == pytest.approx(math.exp(20 / 16))
    assert m["bits_per_byte"][0] == pytest.approx(20 / 16 / math.log(2))
    assert m["token_perplexity"][0] == pytest.approx(math.exp(20 / 10))
    random.shuffle(results)
    assert corpus_metrics(results)["word_perplexity"][0] == pytest.approx(m["word_perplexity"][0])
