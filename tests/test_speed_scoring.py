"""Shared prefixes are forwarded once, and scores equal the unshared computation within 1e-4 (fp32)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_hf_model
from icl_eval.batching import group_shared_prefixes
from icl_eval.requests import LoglikelihoodRequest

DEMOS = "".join(f"\n\nQ: What is {a} plus {b}?\n\nA: {a + b}" for a, b in [(12, 30), (45, 9), (71, 23), (8, 64)])
QUESTIONS = [(98, 45), (33, 21), (5, 50), (60, 17), (11, 11)]


def mc_requests() -> list[LoglikelihoodRequest]:
    """Four candidates per question with one context string each, plus acc_uncond requests on one neutral context."""
    reqs = []
    for a, b in QUESTIONS:
        context = f"A man is sitting on a roof. He starts pulling up roofing on it and adds {a} shingles to {b}"
        reqs += [LoglikelihoodRequest(context, f" ending {c}: {a * c} more words follow") for c in range(4)]
    reqs += [LoglikelihoodRequest("Answer:", f" ending {c}") for c in range(4)]
    return reqs


def fixed_prefix_requests() -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(f"{DEMOS}\n\nQ: What is {a} plus {b}?\n\nA:", f" {a + b}") for a, b in QUESTIONS]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def arch(request, gpt2_tokenizer, tiny_gpt2_model):
    from icl_eval.models.tiny import tiny_llama

    return tiny_gpt2_model if request.param == "gpt2" else tiny_llama(len(gpt2_tokenizer), max_positions=512, seed=1)


def counting_prefixes(hf):
    """Wrap the prefix forward to record the tokens of each shared prefix it forwards."""
    seen = []
    real = hf._extend_cache

    def spy(cache, n_prefix, tokens):
        seen.append(len(tokens))
        return real(cache, n_prefix, tokens)

    hf._extend_cache = spy
    return seen


def forwarding_limits(hf, reqs) -> tuple[int, int]:
    """The least any scheme forwards (every distinct input prefix, a trie node, once) and what sharing only the
    tokens before the first scored position costs (each row's scored inputs then forwarded apart)."""
    nodes, shareable, scored = set(), set(), 0
    for r in reqs:
        e = hf.encode_pair(r.context, r.continuation)
        x = hf._model_input(e)
        nodes.update(tuple(x[: j + 1]) for j in range(len(x)))
        shareable.update(tuple(x[: j + 1]) for j in range(len(x) - len(e.continuation)))
        scored += len(e.continuation)
    return len(nodes), len(shareable) + scored


def assert_forwarded_once(hf, reqs) -> None:
    """Shared prefixes cost one forward: the trie minimum, give or take what the design allows.

    Packed questions lay their candidates out as a trie and reach the minimum; the KV-cache path shares
    only what precedes the first scored position. A common run shorter than `min_shared_prefix` is not worth
    its own forward pass, so siblings may each forward up to min_shared_prefix - 1 such tokens (how many
    depends on the tokenizer's merges). Forwarding a context once per candidate would cost whole contexts
    again, far beyond that slack.
    """
    least, unpacked = forwarding_limits(hf, reqs)
    slack = (hf.min_shared_prefix - 1) * len({r.context for r in reqs})
    assert least <= hf.tokens_forwarded <= unpacked + slack


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.loglikelihood == pytest.approx(y.loglikelihood, abs=1e-4)
        assert (x.n_tokens, x.n_chars, x.is_greedy, x.finite, x.left_truncated) == (y.n_tokens, y.n_chars, y.is_greedy, y.finite, y.left_truncated)


def counting_packs(hf):
    """Wrap the packed forward to record how many questions each packed batch holds."""
    seen = []
    real = hf._score_packed_batch

    def spy(packs, *a):
        seen.append(len(packs))
        return real(packs, *a)

    hf._score_packed_batch = spy
    return seen


@pytest.mark.parametrize("batch_size", [1, 3, "auto"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "kv-cache"])
def test_shared_contexts_equal_unshared(arch, gpt2_tokenizer, batch_size, packed):
    reqs = mc_requests()
    unshared = make_hf_model(arch, gpt2_tokenizer, batch_size=batch_size, share_prefixes=False).loglikelihood(reqs)
    hf = make_hf_model(arch, gpt2_tokenizer, batch_size=batch_size, min_shared_prefix=2)
    assert hf._packs  # both architectures pass the load-time self-check
    hf._packs = packed
    prefixes, packs = counting_prefixes(hf), counting_packs(hf)
    assert_same(hf.loglikelihood(reqs), unshared)
    # Each question's context (and the neutral "Answer:" context) is forwarded once, not once per candidate:
    # packed, each question is one row and several questions share a forward; else through a KV cache.
    if packed:
        # The questions' common opening ("A man is sitting ...") is cached once; "Answer:" packs alone.
        assert len(prefixes) == 1 and sum(packs) == len(QUESTIONS) + 1
        assert batch_size == 1 or max(packs) > 1
    else:
        assert prefixes and not packs
    assert_forwarded_once(hf, reqs)


def test_packed_mask_keeps_candidates_apart(gpt2_tokenizer, tiny_gpt2_model):
    from icl_eval.models.hf_scoring import Pack, Row

    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    pack = Pack([5, 6], [Row(0, [7, 8], [8]), Row(1, [9], [9])])
    ids, positions, visible, spans = hf._packed_inputs([pack, Pack([5], [Row(2, [6], [6])])])
    assert ids[0].tolist() == [5, 6, 7, 8, 9] and positions[0].tolist() == [0, 1, 2, 3, 2]
    assert ids[1, :2].tolist() == [5, 6] and list(spans[1].columns) == [4] and list(spans[2].columns) == [1]
    assert visible[0, 4].tolist() == [True, True, False, False, True]  # the second candidate skips the first
    assert visible[1].any(-1).all()  # padding sees something: no NaN rows
    assert (hf._packed_mask(visible)[:, 0] == 0).equal(visible)


def test_candidates_opening_alike_share_their_first_tokens_in_a_packed_row(gpt2_tokenizer, tiny_gpt2_model, monkeypatch):
    from icl_eval.models import hf_scoring
    from icl_eval.models.hf_scoring import Encoded, Pack, Row

    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    # context 5 6, then the continuations 7 | 8 9 1 and 7 | 8 4 2 (the same first target, 8) and 3 | 1
    pack = Pack([5, 6], [Row(0, [7, 8, 9], [8, 9, 1]), Row(1, [7, 8, 4], [8, 4, 2]), Row(2, [3], [1])])
    ids, positions, visible, spans = hf._packed_inputs([pack])
    assert pack.length == 7 and ids[0].tolist() == [5, 6, 7, 8, 9, 4, 3]
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 4, 2]
    assert visible[0, 5].tolist() == [True, True, True, True, False, True, False]  # 4 sees 7 8, not its sibling 9
    assert [list(s.columns) for s in spans] == [[2, 3, 4], [2, 3, 5], [6]]
    scored = []
    real = hf_scoring.score_targets
    monkeypatch.setattr(hf_scoring, "score_targets", lambda *a: scored.append(len(a[2])) or real(*a))
    packed = hf._score_packed_batch([pack])[0]
    assert scored == [6]  # 7 targets, the shared (position of 7, target 8) once
    plain = hf._score_batch([Encoded([5, 6, 7], [8, 9, 1]), Encoded([5, 6, 7], [8, 4, 2]), Encoded([5, 6, 3], [1])])
    for x, y in zip(packed, plain, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-5) and (x.greedy, x.finite) == (y.greedy, y.finite)


def tiny_gemma3(vocab_size: int, sliding_window: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(2)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=sliding_window, max_position_embeddings=512,
    )
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("window", [8, 512])
def test_packed_rows_respect_a_sliding_window(gpt2_tokenizer, window):
    # transformers applies a ready 4D mask unchanged in sliding-window layers: a packed question longer than the
    # window scored as if the layer saw everything (Gemma 3 270M, window 512: -81.8 against -47.3 forwarded whole).
    model = tiny_gemma3(len(gpt2_tokenizer), window)
    reqs = mc_requests()
    hf = make_hf_model(model, gpt2_tokenizer, min_shared_prefix=2)
    assert hf._packs and hf._attention_window == window
    packs = counting_packs(hf)
    assert_same(hf.loglikelihood(reqs), make_hf_model(model, gpt2_tokenizer, share_prefixes=False).loglikelihood(reqs))
    # The questions (~35 tokens) pack under a 512 window; under 8 only the short "Answer:" group still does.
    assert sum(packs) == (len(QUESTIONS) + 1 if window == 512 else 1)


def test_packing_falls_back_when_the_model_ignores_the_mask(gpt2_tokenizer, tiny_gpt2_model, monkeypatch):
    from icl_eval.models.hf import HFModel

    real = tiny_gpt2_model.forward
    monkeypatch.setattr(tiny_gpt2_model, "forward", lambda *a, attention_mask=None, position_ids=None, **k: real(*a, **k))
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, min_shared_prefix=2)
    assert isinstance(hf, HFModel) and not hf._packs
    monkeypatch.undo()
    assert_same(hf.loglikelihood(mc_requests()), make_hf_model(tiny_gpt2_model, gpt2_tokenizer, share_prefixes=False).loglikelihood(mc_requests()))


def test_fixed_prefix_reused_and_equal_to_plain(arch, gpt2_tokenizer):
    reqs = fixed_prefix_requests()
    plain = make_hf_model(arch, gpt2_tokenizer, batch_size=2, share_prefixes=False).loglikelihood(reqs)
    hf = make_hf_model(arch, gpt2_tokenizer, batch_size=2)
    seen, packs = counting_prefixes(hf), counting_packs(hf)
    assert_same(hf.loglikelihood(reqs), plain)
    demo_tokens = len(gpt2_tokenizer(DEMOS).input_ids)
    # The demonstrations (and the shared "\n\nQ: What is") once: as a cached prefix, or as the context of one
    # packed row holding every question's answer.
    assert (len(seen) == 1 and seen[0] >= demo_tokens) or (not seen and sum(packs) == 1)
    assert_forwarded_once(hf, reqs)


def test_prefix_is_a_token_prefix_when_text_merges_across_the_boundary(gpt2_tokenizer, tiny_gpt2_model):
    # The common *text* "...the quick brown fo" is not a common *token* prefix: "fox" and "fo od" tokenize differently.
    base = "The quick brown fox jumps over the lazy dog. " * 3
    reqs = [LoglikelihoodRequest(base + "fo" + tail, " end") for tail in ("x", "od", "rtune", "x and more")]
    plain = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, share_prefixes=False).loglikelihood(reqs)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    hf._packs = False  # the cache path names each prefix it forwards
    seen = counting_prefixes(hf)
    assert_same(hf.loglikelihood(reqs), plain)
    enc = [hf._model_input(hf.encode_pair(r.context, r.continuation)) for r in reqs]
    assert seen and all(all(e[:n] == enc[0][:n] for e in enc) for n in seen)
    hf._packs = True
    packs = []
    real = hf._packed_inputs
    hf._packed_inputs = lambda ps: packs.extend(ps) or real(ps)
    assert_same(hf.loglikelihood(reqs), plain)
    assert packs and all(e[: len(p.prefix)] == p.prefix for p in packs for e in enc)


def test_left_truncated_rows_share_safely(gpt2_tokenizer):
    from icl_eval.models.tiny import tiny_gpt2

    small = tiny_gpt2(len(gpt2_tokenizer), n_positions=48, seed=3)
    reqs = [LoglikelihoodRequest("word " * 60 + "shared tail of the context", f" option {c}") for c in range(3)]
    plain = make_hf_model(small, gpt2_tokenizer, share_prefixes=False).loglikelihood(reqs)
    shared = make_hf_model(small, gpt2_tokenizer).loglikelihood(reqs)
    assert all(r.left_truncated for r in shared)
    assert_same(shared, plain)


def test_oom_during_shared_path_splits_and_keeps_results(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    reqs = mc_requests()
    expected = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=8).loglikelihood(reqs)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=8, min_shared_prefix=2)
    hf._packs = False
    real = hf._score_against_prefix
    calls = []

    def flaky(cache, n_prefix, rows):
        calls.append(len(rows))
        if len(rows) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(cache, n_prefix, rows)

    monkeypatch.setattr(hf, "_score_against_prefix", flaky)
    finished = {}
    got = hf.loglikelihood(reqs, on_result=lambda i, r: finished.setdefault(i, r))
    assert_same(got, expected)
    assert sorted(finished) == list(range(len(reqs)))  # every result reported once, none lost to the splits
    assert max(calls) > 1 and hf.max_rows == 1


def test_oom_during_packed_path_splits_and_keeps_results(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    reqs = mc_requests()
    expected = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, share_prefixes=False).loglikelihood(reqs)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=8, min_shared_prefix=2)
    real = hf._score_packed_batch
    calls = []

    def flaky(packs, *a):
        calls.append(len(packs))
        if len(packs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(packs, *a)

    monkeypatch.setattr(hf, "_score_packed_batch", flaky)
    finished = {}
    got = hf.loglikelihood(reqs, on_result=lambda i, r: finished.setdefault(i, r))
    assert_same(got, expected)
    assert sorted(finished) == list(range(len(reqs)))
    assert max(calls) > 1 and hf.max_rows == 1


def test_grouping_saves_tokens_and_ignores_chance_matches():
    rows = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], [9, 9], [1, 2, 3, 4, 8], [7, 7, 7, 7, 7, 7], [1, 2, 0]]
    groups, alone = group_shared_prefixes(rows, min_shared=4)
    assert groups == [(4, [0, 1, 3])]
    assert sorted(alone) == [2, 4, 5]
    # Identical short rows group even below min_shared: they are one question's candidates.
    groups, alone = group_shared_prefixes([[3, 4], [3, 4], [3, 5], []], min_shared=4)
    assert groups == [(2, [0, 1])] and sorted(alone) == [2, 3]
    # Identical rows share everything; a group never claims more than its shortest row.
    groups, alone = group_shared_prefixes([[5, 6, 7], [5, 6, 7], [5, 6, 7, 8]], min_shared=1)
    assert groups == [(3, [0, 1, 2])] and alone == []
    assert group_shared_prefixes([], 4) == ([], [])
