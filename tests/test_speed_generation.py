"""Continuous batching: rows leave the batch the step they stop, waiting rows join, outputs equal HF greedy."""

from __future__ import annotations

import pytest
import torch

from conftest import make_hf_model
from icl_eval.requests import GenerationRequest

PROMPTS = ["Q: What is 2 plus 2?\nA:", "Hello", "The capital of France is", "x", "naïve café", "Q: 1+1?\nA:", "She held the torch", "7 8 9"]


def requests() -> list[GenerationRequest]:
    # Different budgets and stops: rows finish at different steps, so the batch must shrink and refill.
    return [GenerationRequest(p, ("\n", ".") if i % 2 else ("zz",), 3 + 2 * i) for i, p in enumerate(PROMPTS)]


def hf_greedy(model, tok, req: GenerationRequest) -> str:
    ids = tok(req.context, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=req.max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(ref[0, ids.shape[1] :])
    cut = min([i for u in req.until if (i := text.find(u)) >= 0], default=len(text))
    return text[:cut]


@pytest.mark.parametrize("batch_size", [1, 3, "auto"])
def test_stream_matches_plain_greedy_and_forwards_each_token_once(tiny_gpt2_model, gpt2_tokenizer, batch_size):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=batch_size)
    reqs = requests()
    seen = []
    outs = hf.generate(reqs, on_result=lambda i, r: seen.append(i))
    for req, out in zip(reqs, outs):
        assert out.text == hf_greedy(tiny_gpt2_model, gpt2_tokenizer, req)
    assert sorted(seen) == list(range(len(reqs)))
    # The prompt once, then one step per generated token but the last: a finished row costs nothing further.
    prompts = sum(len(hf.encode(r.context)) for r in reqs)
    assert hf.tokens_forwarded == prompts + sum(o.n_tokens - 1 for o in outs)


def recorded_shapes(hf, monkeypatch) -> list[tuple[int, int]]:
    """The (rows, width) of every forward's input ids, in order, after the one-token cache probe (not a step)."""
    hf._kv_cache()
    shapes = []
    real = hf.model.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(hf.model, "forward", spy)
    return shapes


def with_small_budget(model, tokenizer):
    """An auto-batched model whose token budget (16) is below one row: the CPU's case for long prompts."""
    from icl_eval.batching import BatchBudget

    hf = make_hf_model(model, tokenizer, batch_size="auto")
    hf.budget = BatchBudget(max_rows=None, tokens=16, floor=hf.max_length)
    return hf


def texts_each_reported_once(hf, reqs) -> list[str]:
    """The generated texts, after checking that on_result reported every request exactly once (and the same result)."""
    reported = {}
    outs = hf.generate(reqs, on_result=lambda i, r: reported.setdefault(i, []).append(r))
    assert sorted(reported) == list(range(len(reqs))) and all(v == [outs[i]] for i, v in reported.items())
    return [o.text for o in outs]


def test_rows_leave_and_join_the_batch(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=3)
    shapes = recorded_shapes(hf, monkeypatch)
    hf.generate(requests())
    widths = [rows for rows, _ in shapes]
    assert max(widths) == 3 and min(widths) < 3  # never more than the cap, and stopped rows really leave
    assert len(widths) < sum(r.max_new_tokens for r in requests()) / 2  # rows ran side by side


def test_a_cpu_decodes_more_rows_than_one_efficient_forward_holds(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    # A CPU's token budget is a forward size (where its matmuls get efficient). A decoding step forwards one
    # token per row, so rows decode side by side up to that many, while every prefill stays within the budget:
    # at a budget below one row (the measured 256 against 5-shot TriviaQA's ~200-token prompts) rows had
    # decoded one at a time.
    hf = with_small_budget(tiny_gpt2_model, gpt2_tokenizer)
    assert hf.device.type == "cpu"
    shapes = recorded_shapes(hf, monkeypatch)
    reqs = requests()
    outs = hf.generate(reqs)
    assert [o.text for o in outs] == [hf_greedy(tiny_gpt2_model, gpt2_tokenizer, r) for r in reqs]
    steps = [rows for rows, width in shapes if width == 1]
    prefills = [(rows, width) for rows, width in shapes if width > 1]
    longest = max(len(hf.encode(r.context)) + r.max_new_tokens for r in reqs)
    capacity = hf._decode_rows(longest)  # a KV cache of a tenth of the weights (all 8 rows with GPT-2's vocabulary)
    assert capacity > hf.budget.rows_for(longest) and max(steps) == min(capacity, len(reqs))
    assert all(rows * width <= 16 or rows == 1 for rows, width in prefills)


def test_on_a_cpu_short_rows_decode_within_the_cache_bound_not_the_budgets_rows(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    # A budget of 4,096 tokens holds hundreds of these rows, and short rows had all decoded together: one-shot
    # arithmetic's KV cache (42 SmolLM2 rows, 64 Gemma 3 rows) took the peak above lm-eval's. On a CPU the
    # cache bound (a tenth of the weights) sets the rows, here made to hold 12, and steps stay that wide.
    from icl_eval.batching import BatchBudget

    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size="auto")
    hf.budget = BatchBudget(max_rows=None, tokens=4096, floor=hf.max_length)
    reqs = [GenerationRequest(p, ("zz",), 6) for p in PROMPTS] * 3
    longest = max(len(hf.encode(r.context)) + r.max_new_tokens for r in reqs)
    weight_bytes = hf.model.get_memory_footprint(return_buffers=False)
    hf._kv_facts = hf._kv_cache()._replace(bytes_per_token=weight_bytes // 10 // (longest * 12))
    assert hf.budget.rows_for(longest) > len(reqs) and hf._decode_rows(longest) == 12
    shapes = recorded_shapes(hf, monkeypatch)
    outs = hf.generate(reqs)
    assert [o.text for o in outs] == [hf_greedy(tiny_gpt2_model, gpt2_tokenizer, r) for r in reqs]
    assert max(rows for rows, width in shapes if width == 1) == 12
    # Below eight rows the bound gives way (a step's weight read is shared by several rows) as far as a
    # quarter of the weights holds; above 24 a step no longer gets cheaper per row, and the cache only adds memory.
    for rows, capacity in ((4, 8), (2, 5), (100, 24)):
        hf._kv_facts = hf._kv_facts._replace(bytes_per_token=weight_bytes // 10 // (longest * rows))
        assert hf._decode_rows(longest) == capacity


def test_joining_rows_come_from_a_pool_prefilled_in_efficient_forwards(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    # Rows leave a few at a time. Prefilling only the rows that had room made most forwards fixed cost (Gemma
    # 3's TriviaQA: 41 prefills of one to three prompts); now a prefill also takes rows that wait, prefilled,
    # in a pool until places free, up to half the batch, so there are fewer and larger prefills.
    from icl_eval.batching import BatchBudget

    reqs = [r for r in requests() if len(gpt2_tokenizer(r.context).input_ids) > 1] * 2  # a prefill is wider than a step

    def run(pooled: bool):
        hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size="auto")
        hf.budget = BatchBudget(max_rows=None, tokens=16, floor=hf.max_length, forward_cost=40)  # 5%: 760 tokens
        monkeypatch.setattr(type(hf), "_decode_rows", lambda self, longest: 4)
        if not pooled:
            monkeypatch.setattr(hf, "_prefill_tokens", lambda: None)  # only the rows there is room for
        shapes = recorded_shapes(hf, monkeypatch)
        outs = hf.generate(reqs)
        monkeypatch.undo()
        assert hf.tokens_forwarded == sum(len(hf.encode(r.context)) for r in reqs) + sum(o.n_tokens - 1 for o in outs)
        assert max(rows for rows, width in shapes if width == 1) <= 4  # the batch itself stays within its cap
        return [o.text for o in outs], [rows for rows, width in shapes if width > 1]

    texts, pooled = run(True)
    assert texts == [hf_greedy(tiny_gpt2_model, gpt2_tokenizer, r) for r in reqs]
    plain_texts, plain = run(False)
    assert plain_texts == texts
    assert sum(pooled) == sum(plain) == len(reqs)  # each row prefilled once
    assert len(pooled) < len(plain) and max(pooled[1:]) == 2 and min(plain[1:]) == 1


@pytest.mark.parametrize("window", [8, 64])
def test_a_sliding_window_cache_joins_only_while_it_holds_every_token(gpt2_tokenizer, monkeypatch, window):
    # Gemma 3's sliding-window layers hold the last window - 1 tokens. Narrower than that, a batch's cache is
    # what a plain one would be, and rows join it as others stop (its TriviaQA prompts, ~200 tokens under a 512
    # window, had decoded in groups, 114 steps for 100 questions, each step reading the 262k-row head). As wide
    # as the window (8 here: most prompts are longer), every row is prefilled in one forward and none joins.
    from test_speed_scoring import tiny_gemma3

    model = tiny_gemma3(len(gpt2_tokenizer), window)
    hf = with_small_budget(model, gpt2_tokenizer)
    monkeypatch.setattr(type(hf), "_decode_rows", lambda self, longest: 3)  # rows must leave and join
    shapes = recorded_shapes(hf, monkeypatch)
    reqs = requests()
    outs = hf.generate(reqs)
    prefills = [(rows, width) for rows, width in shapes if width > 1]  # before the references add theirs
    assert hf._kv_cache().joinable and hf._kv_cache().window == window
    assert [o.text for o in outs] == [make_hf_model(model, gpt2_tokenizer, batch_size=1).generate([r])[0].text for r in reqs]
    if window == 8:  # a prompt as wide as the window comes in a whole group, in one forward over the budget
        wide = [rows for rows, width in prefills if width >= window]
        assert wide and set(wide) <= {3, len(reqs) % 3}
    else:
        assert len(prefills) > len(reqs) // 3 and any(rows < 3 for rows, _ in prefills)  # rows joined one by one
        assert all(rows * width <= 16 or rows == 1 for rows, width in prefills)


def test_oom_in_a_later_prefill_requeues_each_row_once(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    reqs = requests()
    expected = [hf_greedy(tiny_gpt2_model, gpt2_tokenizer, r) for r in reqs]
    hf = with_small_budget(tiny_gpt2_model, gpt2_tokenizer)
    real, prefills = hf.model.forward, [0]

    def flaky(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            prefills[0] += 1
            if prefills[0] == 2:  # the second prefill of the first group: the first is already in the batch
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf.model, "forward", flaky)
    assert texts_each_reported_once(hf, reqs) == expected


def test_oom_during_generation_keeps_finished_rows(tiny_gpt2_model, gpt2_tokenizer, monkeypatch):
    reqs = requests()
    expected = [o.text for o in make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4).generate(reqs)]
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4)
    real = hf.model.forward
    calls = [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if kwargs["input_ids"].shape[0] > 2 and calls[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf.model, "forward", flaky)
    assert texts_each_reported_once(hf, reqs) == expected
    assert hf.max_rows <= 2
