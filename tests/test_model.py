"""The HF backend: batched log-likelihoods agree with a plain forward pass and do not depend on batch size."""

from __future__ import annotations

import pytest
import torch

from conftest import make_hf_model
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest

REQUESTS = [
    LoglikelihoodRequest("Q: What is 98 plus 45?\n\nA:", " 143"),
    LoglikelihoodRequest("Q: What is 33 minus 88?\n\nA:", " -55"),
    LoglikelihoodRequest("She held the torch in front of her. She caught her", " breath"),
    LoglikelihoodRequest("A much longer context " * 12 + "that ends here", " and a continuation of several tokens"),
    LoglikelihoodRequest("", " no context at all"),
    LoglikelihoodRequest("café ", "naïve"),
    LoglikelihoodRequest("x", " y"),
]


def plain_loglikelihood(model, tokenizer, hf, req):
    """One example, full logits, full log-softmax: the slow reference the batched path must match."""
    enc = hf.encode_pair(req.context, req.continuation)
    ids = torch.tensor([enc.context + enc.continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    n = len(enc.continuation)
    positions = range(ids.shape[1] - n - 1, ids.shape[1] - 1)
    lp = sum(logprobs[p, ids[0, p + 1]].item() for p in positions)
    greedy = all(logprobs[p].argmax().item() == ids[0, p + 1].item() for p in positions)
    return lp, n, greedy


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def arch(request, gpt2_tokenizer, tiny_gpt2_model):
    from icl_eval.models.tiny import tiny_llama

    if request.param == "gpt2":
        return tiny_gpt2_model
    return tiny_llama(len(gpt2_tokenizer), max_positions=512, seed=1)


def test_batched_matches_plain_forward(arch, gpt2_tokenizer):
    hf = make_hf_model(arch, gpt2_tokenizer, batch_size=4)
    results = hf.loglikelihood(REQUESTS)
    for req, res in zip(REQUESTS, results):
        lp, n, greedy = plain_loglikelihood(arch, gpt2_tokenizer, hf, req)
        assert res.loglikelihood == pytest.approx(lp, abs=1e-4)
        assert res.n_tokens == n
        assert res.is_greedy == greedy
        assert res.n_chars == len(req.continuation)
        assert res.finite


def test_batch_size_invariance(arch, gpt2_tokenizer):
    runs = [make_hf_model(arch, gpt2_tokenizer, batch_size=bs).loglikelihood(REQUESTS * 3) for bs in (1, 8, "auto")]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert abs(a.loglikelihood - b.loglikelihood) < 1e-4
            assert a.is_greedy == b.is_greedy and a.n_tokens == b.n_tokens


def test_head_split_is_used_and_exact(tiny_gpt2_model, gpt2_tokenizer):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer)
    assert hf._split_head, "GPT-2's base model + lm_head reproduce its logits: only continuation positions are projected"


def test_bos_policies(gpt2_tokenizer, tiny_gpt2_model):
    never = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, bos_policy="never")
    always = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, bos_policy="always")
    assert not never.adds_bos  # GPT-2's tokenizer adds none by itself
    a, b = never.encode_pair("Hello", " world"), always.encode_pair("Hello", " world")
    assert b.context == [gpt2_tokenizer.bos_token_id] + a.context and a.continuation == b.continuation
    assert "always" in always.bos_description


def test_left_truncation_counted(gpt2_tokenizer):
    from icl_eval.models.tiny import tiny_gpt2

    small = make_hf_model(tiny_gpt2(len(gpt2_tokenizer), n_positions=16), gpt2_tokenizer)
    long_req = LoglikelihoodRequest("word " * 40, "end")
    res = small.loglikelihood([long_req])[0]
    assert res.left_truncated and res.finite


def test_oom_splits_batch_and_keeps_results(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=8)
    expected = [r.loglikelihood for r in hf.loglikelihood(REQUESTS)]
    real = hf._score_batch

    def flaky(rows):
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(rows)

    monkeypatch.setattr(hf, "_score_batch", flaky)
    got = [r.loglikelihood for r in hf.loglikelihood(REQUESTS)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert hf.max_rows <= 4


def test_generation_stops_and_matches_plain_greedy(tiny_gpt2_model, gpt2_tokenizer):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=3)
    prompts = ["Q: What is 2 plus 2?\nA:", "Hello", "The capital of France is", "x"]
    reqs = [GenerationRequest(p, ("\n", "."), 12) for p in prompts]
    outs = hf.generate(reqs)
    for p, out in zip(prompts, outs):
        ids = gpt2_tokenizer(p, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = tiny_gpt2_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=gpt2_tokenizer.eos_token_id)
        ref_text = gpt2_tokenizer.decode(ref[0, ids.shape[1]:])
        cut = min([i for i in (ref_text.find("\n"), ref_text.find(".")) if i >= 0], default=len(ref_text))
        assert out.text == ref_text[:cut]
        assert "\n" not in out.text and "." not in out.text
        assert out.raw.startswith(out.text)


def test_generation_batch_invariance(tiny_gpt2_model, gpt2_tokenizer):
    reqs = [GenerationRequest(p, ("\n",), 10) for p in ["a", "bb bb", "Q: 1+1?\nA:", "longer prompt " * 5]]
    one = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=1).generate(reqs)
    many = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4).generate(reqs)
    assert [o.text for o in one] == [o.text for o in many]
