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


def _oom_once(monkeypatch, hf) -> tuple[list[int], list[int]]:
    """The decoder (under both the scoring and the generation forward) raises CUDA out of memory the first time
    it sees more than one row, then works; returns (rows per successful forward, rows of the failed one)."""
    decoder = hf.model.get_decoder()
    real = decoder.forward
    widths: list[int] = []
    failed: list[int] = []

    def flaky(*args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if not failed and ids.shape[0] > 1:
            failed.append(ids.shape[0])
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        widths.append(ids.shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", flaky)
    return widths, failed


GEN_REQUESTS = [GenerationRequest(p, ("\n",), 6) for p in ["a", "bb bb", "Q: 1+1?\nA:", "longer prompt " * 5]]


@pytest.mark.parametrize("method", ["loglikelihood", "generate"])
def test_an_oom_halves_the_batch_for_its_call_only(tiny_gpt2_model, gpt2_tokenizer, monkeypatch, method):
    reqs = REQUESTS if method == "loglikelihood" else GEN_REQUESTS
    rows = 8 if method == "loglikelihood" else 4  # every request fits one batch
    expected = getattr(make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=rows), method)(reqs)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=rows)
    widths, failed = _oom_once(monkeypatch, hf)
    reported = {}
    got = getattr(hf, method)(reqs, on_result=lambda i, r: reported.setdefault(i, []).append(r))
    assert failed == [len(reqs)] and max(widths) <= (len(reqs) + 1) // 2 and hf.max_rows == rows // 2  # the rest of the call: half
    assert sorted(reported) == list(range(len(reqs))) and all(len(v) == 1 for v in reported.values())  # none lost, none twice
    if method == "loglikelihood":
        assert [r.loglikelihood for r in got] == pytest.approx([r.loglikelihood for r in expected], abs=1e-5)
    else:
        assert [r.text for r in got] == [r.text for r in expected]
    widths.clear()
    getattr(hf, method)(reqs)  # the next call (the next task) starts from the configured batch size again
    assert max(widths) == len(reqs) and hf.max_rows == rows


def test_describe_and_settings_are_the_results_blocks(tiny_gpt2_model, gpt2_tokenizer):
    import json

    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=3)
    described = hf.describe()
    assert list(described) == ["name", "path", "num_parameters", "dtype", "device", "fingerprint", "max_length"]
    assert described == {
        "name": "tiny", "path": "", "num_parameters": sum(p.numel() for p in tiny_gpt2_model.parameters()), "dtype": "float32",
        "device": "cpu", "fingerprint": hf.fingerprint(), "max_length": 512,
    }
    assert hf.settings() == {"batch_size": 3, "bos_policy": "tokenizer", "bos": hf.bos_description}
    assert make_hf_model(tiny_gpt2_model, gpt2_tokenizer).settings()["batch_size"] == "auto"
    json.dumps([described, hf.settings()])  # both go into results.json as they are
