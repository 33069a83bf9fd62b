"""The context/continuation split: at the character boundary, via offsets, never by assuming a token prefix."""

from __future__ import annotations

import pytest

from conftest import make_hf_model

TRICKY = [
    ("Q: What is 98 plus 45?\n\nA:", " 143"),
    ("The answer is", " -55"),
    ("trailing space ", "word"),  # the space moves onto the continuation
    ("two spaces  ", "x"),
    ("newline before\n", "next"),
    ("digits 12", "345"),  # 12345 may merge across the boundary
    ("hel", "lo world"),  # "hello" is one GPT-2 token straddling the boundary
    ("café", " naïve résumé"),
    ("東京", "タワー"),
    ("emoji ", "🙂🙂 ok"),
    ("", " empty context"),
    ("tabs\t", "\tand tabs"),
]


@pytest.fixture(scope="module")
def model(tiny_gpt2_model, gpt2_tokenizer):
    return make_hf_model(tiny_gpt2_model, gpt2_tokenizer)


@pytest.mark.parametrize("context,continuation", TRICKY)
def test_split_covers_exactly_the_continuation(model, gpt2_tokenizer, context, continuation):
    enc = model.encode_pair(context, continuation)
    assert enc.continuation, "every continuation gets at least one token"
    stripped = context.rstrip()
    moved = context[len(stripped):]
    if not stripped:
        assert enc.context == [model.prefix_id]
        assert gpt2_tokenizer.decode(enc.continuation) == context + continuation
        return
    # Context + continuation tokens are exactly the tokenization of the whole string.
    whole = gpt2_tokenizer(context + continuation, add_special_tokens=False).input_ids
    assert enc.context + enc.continuation == whole
    cont_text = gpt2_tokenizer.decode(enc.continuation)
    # The continuation's tokens hold every character of the continuation (and the moved whitespace).
    assert cont_text.endswith(continuation)
    assert (moved + continuation).endswith(continuation) and len(cont_text) >= len(moved + continuation)
    # The context tokens never contain continuation characters.
    assert stripped.startswith(gpt2_tokenizer.decode(enc.context))


def test_trailing_space_moves_to_continuation(model, gpt2_tokenizer):
    a = model.encode_pair("The answer is ", "42")
    b = model.encode_pair("The answer is", " 42")
    assert a == b


def test_straddling_token_belongs_to_continuation(model, gpt2_tokenizer):
    # When a token spans the boundary, lm-eval's prefix assumption breaks; we keep the whole token.
    ctx, cont = "hel", "lo"
    whole = gpt2_tokenizer(ctx + cont, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(s, e) for s, e in whole["offset_mapping"] if s < len(ctx) < e]
    if not spans:
        pytest.skip("this tokenizer does not merge across this boundary")
    enc = model.encode_pair(ctx, cont)
    assert gpt2_tokenizer.decode(enc.continuation).endswith("lo")
    assert len(enc.context) + len(enc.continuation) == len(whole["input_ids"])


def test_empty_continuation_is_an_error(model):
    from icl_eval.errors import IclEvalError

    with pytest.raises(IclEvalError, match="empty continuation"):
        model.encode_pair("context", "")
