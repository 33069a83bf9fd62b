"""icl-eval's own tokenisation of requests, shared by the in-process backends (HF and vLLM) so both cut the
context/continuation boundary, add BOS and pick the prefix token identically.

A mixin: the class supplies `tokenizer` (a fast Hugging Face tokenizer), `bos_policy`, `adds_bos` (from
tokenizer_adds_bos) and `prefix_id` (BOS, else EOS: what an empty context reads).
"""

from __future__ import annotations

from collections.abc import Sequence

from icl_eval.errors import IclEvalError
from icl_eval.models.hf_scoring import Encoded

BOS_POLICIES = ("tokenizer", "always", "never")


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token before a text by itself (what --bos tokenizer follows)."""
    ids = tokenizer("a").input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


class Tokenization:
    @property
    def bos_description(self) -> str:
        """The results' line on BOS: the policy and what it does with this tokenizer."""
        added = "adds BOS" if self.adds_bos else "adds no BOS"
        return f"{self.bos_policy} (tokenizer {added}; empty contexts get token {self.prefix_id})"


    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.bos_policy == "never" or (self.bos_policy == "tokenizer" and not self.adds_bos):
            return ids
        return [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.prefix_id] + ids

    def encode(self, text: str) -> list[int]:
        # verbose=False: a prompt is tokenized whole to learn whether it fits, so being longer than the tokenizer's
        # model_max_length is expected here, not a mistake worth transformers' warning (we truncate ourselves).
        return self._with_bos(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def encode_pair(self, context: str, continuation: str) -> Encoded:
        """Split tokenize(context + continuation) at the character boundary, using the tokenizer's offsets.

        Trailing whitespace of the context moves to the continuation first (lm-eval's rule), so that
        " 143" is one token rather than " " closing the context. A token that straddles the boundary
        belongs to the continuation: it holds continuation characters.
        """
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        """encode_pair for many pairs, tokenized in one batched call (the fast tokenizer works in parallel)."""
        moved = []
        for context, continuation in pairs:
            n_space = len(context) - len(context.rstrip())
            if n_space:
                context, continuation = context[:-n_space], context[-n_space:] + continuation
            if not continuation:
                raise IclEvalError("empty continuation: a log-likelihood request needs text to score")
            moved.append((context, continuation))
        # An empty context gets the prefix token and the continuation is tokenized alone.
        texts = [c + t if c else t for c, t in moved]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False) if texts else {"input_ids": [], "offset_mapping": []}
        out = []
        for (context, _), ids, offsets in zip(moved, enc["input_ids"], enc["offset_mapping"]):
            if not context:
                out.append(Encoded([self.prefix_id], ids))
                continue
            boundary = len(context)
            split = next((i for i, (start, end) in enumerate(offsets) if end > boundary or start >= boundary), len(ids))
            out.append(Encoded(self._with_bos(ids[:split]), ids[split:]))
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))
