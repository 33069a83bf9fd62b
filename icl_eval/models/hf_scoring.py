"""Log-likelihood scoring for the HF backend: continuations after their contexts, rows that share leading tokens
forwarded once, and whole documents in rolling windows.

A mixin of HFModel (models/hf.py), which supplies the model, its tokenizer and encoding (encode_pairs,
prefix_id, pad_id), the context window (max_length), the batch budget and the transformers-version details
(_cache_arg, _cache_of, _split_head).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from icl_eval.batching import group_shared_prefixes, plan_batches, run_splitting_on_oom
from icl_eval.errors import IclEvalError
from icl_eval.requests import LoglikelihoodRequest, LoglikelihoodResult, OnResult, Progress, RollingRequest, RollingResult
from icl_eval.rolling import count_bytes, count_words, rolling_windows


@dataclass(frozen=True)
class Encoded:
    """A request's tokens: the model reads context + continuation[:-1] and is scored on the continuation."""

    context: list[int]
    continuation: list[int]


class Row(NamedTuple):
    """One request on the shared-prefix path: its tokens after the prefix already forwarded, and its targets."""

    index: int  # the request's position in the call
    tokens: list[int]  # what the model still has to read (after the prefix), ending before the last target
    continuation: list[int]  # the scored tokens; the last len(continuation) positions of `tokens` predict them


class Span(NamedTuple):
    """Where one row's targets sit in a forward pass: batch row, first predicting position, target tokens."""

    row: int
    start: int
    targets: list[int]


class Scored(NamedTuple):
    logprob: float  # summed over the targets
    greedy: bool  # every target was the argmax
    finite: bool  # no NaN or inf in the log-probs at the target positions


# (request indices, their scores) as each batch finishes
Finish = Callable[[list[int], list[Scored]], None]


class LoglikelihoodScoring:
    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[LoglikelihoodResult]:
        """Scores every request; rows that start with the same tokens have that prefix forwarded only once.

        Candidates of one multiple-choice question (identical contexts) and prompts that open with the same
        fixed demonstrations are grouped by their common token prefix; the prefix's KV cache is computed
        once per group and each row forwards only its own remaining tokens. Other rows go through plain
        length-sorted batches. Both paths give the same scores within float rounding.
        """
        self.budget.reset()
        encoded = self.encode_pairs([(r.context, r.continuation) for r in requests])
        for r, e in zip(requests, encoded):
            if len(e.continuation) > self.max_length:
                raise IclEvalError(f"a continuation of {len(e.continuation)} tokens is longer than the model's context ({self.max_length}): {r.continuation[:60]!r}")
        inputs = [self._model_input(e) for e in encoded]
        lengths = [len(x) for x in inputs]
        results: list[LoglikelihoodResult | None] = [None] * len(requests)

        def finish(done: list[int], scored: list[Scored]) -> None:
            for i, s in zip(done, scored):
                results[i] = LoglikelihoodResult(
                    s.logprob, len(encoded[i].continuation), len(requests[i].continuation), s.greedy,
                    left_truncated=len(encoded[i].context) + len(encoded[i].continuation) - 1 > self.max_length,
                    finite=s.finite,
                )
                if on_result:
                    on_result(i, results[i])
            if progress:
                progress(len(done), sum(lengths[i] for i in done))

        if self.share_prefixes:
            self._score_sharing(None, 0, [Row(i, inputs[i], encoded[i].continuation) for i in range(len(requests))], finish)
        else:
            self._score_plain(list(range(len(requests))), encoded, lengths, finish)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[RollingResult]:
        """Each document's summed log-likelihood over rolling windows (rolling.rolling_windows, each request's
        own stride), with its word (lm-eval's count), byte and token counts.

        Windows of all documents are batched together; a document's result is reported when its last window
        is scored. The document is tokenized without special tokens: the prefix token stands in for BOS.
        """
        self.budget.reset()
        texts = [r.text for r in requests]
        if self.prefix_id is None:
            raise IclEvalError(f"{self.name}: its tokenizer has neither a BOS nor an EOS token; rolling log-likelihood needs one to predict a document's first token")
        token_lists = self.tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else []
        encoded: list[Encoded] = []
        owner: list[int] = []  # window -> document
        for d, (ids, request) in enumerate(zip(token_lists, requests)):
            for context, continuation in rolling_windows(ids, self.prefix_id, self.max_length, request.stride):
                encoded.append(Encoded(context, continuation))
                owner.append(d)
        lengths = [len(e.context) + len(e.continuation) - 1 for e in encoded]
        remaining = [0] * len(texts)
        for d in owner:
            remaining[d] += 1
        scores: list[list[float]] = [[] for _ in texts]
        finite = [True] * len(texts)
        results: list[RollingResult | None] = [None] * len(texts)

        def complete(d: int) -> None:
            # fsum: the sum does not depend on the order in which batches finished (it refuses inf + -inf: plain sum)
            total = math.fsum(scores[d]) if finite[d] else sum(scores[d])
            results[d] = RollingResult(total, len(token_lists[d]), count_words(texts[d]), count_bytes(texts[d]), finite[d])
            if on_result:
                on_result(d, results[d])

        empty = [d for d in range(len(texts)) if remaining[d] == 0]
        for d in empty:  # no tokens: nothing to score, log-likelihood 0
            complete(d)
        if progress and empty:
            progress(len(empty), 0)

        def finish(done: list[int], scored: list[Scored]) -> None:
            finished = 0
            for i, s in zip(done, scored):
                d = owner[i]
                scores[d].append(s.logprob)
                finite[d] = finite[d] and s.finite
                remaining[d] -= 1
                if remaining[d] == 0:
                    complete(d)
                    finished += 1
            if progress:
                progress(finished, sum(lengths[i] for i in done))

        if encoded:
            self._score_plain(list(range(len(encoded))), encoded, lengths, finish)
        return results  # type: ignore[return-value]

    def _model_input(self, e: Encoded) -> list[int]:
        """What the model reads: context + continuation without its last token, left-truncated to the window."""
        return (e.context + e.continuation)[:-1][-self.max_length :]

    # --- plain batches --------------------------------------------------------------------
    def _score_plain(self, indices: list[int], encoded: Sequence[Encoded] | dict[int, Encoded], lengths: Sequence[int] | dict[int, int], finish: Finish) -> None:
        """Length-sorted batches of whole rows; `encoded` and `lengths` are looked up by request index."""
        for batch in plan_batches([lengths[i] for i in indices], self.budget.max_rows, self.budget.tokens):
            batch = [indices[j] for j in batch]
            for done, scored in run_splitting_on_oom(batch, lambda b: self._score_batch([encoded[i] for i in b]), self.budget):
                finish(done, scored)

    @torch.no_grad()
    def _score_batch(self, rows: list[Encoded]) -> list[Scored]:
        """One forward pass over whole rows; log-softmax only at continuation positions."""
        inputs = [self._model_input(r) for r in rows]
        ids = self._right_padded(inputs)
        self.tokens_forwarded += sum(len(x) for x in inputs)
        spans = [Span(b, len(x) - len(r.continuation), r.continuation) for b, (x, r) in enumerate(zip(inputs, rows))]
        # No attention mask (see _right_padded): attention takes its fused causal path.
        return self._score_positions(dict(input_ids=ids.to(self.device)), spans)

    def _right_padded(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """Token rows as one tensor, padded on the right: real tokens keep positions 0..n-1 and, under the causal
        mask alone, never see a pad (whose outputs are never read), so no attention mask is needed."""
        ids = torch.full((len(rows), max(len(x) for x in rows)), self.pad_id, dtype=torch.long)
        for b, x in enumerate(rows):
            ids[b, : len(x)] = torch.tensor(x)
        return ids

    def _score_positions(self, forward_kwargs: dict, spans: list[Span]) -> list[Scored]:
        """Run the model and score only the positions the spans name."""
        row_idx, pos_idx, targets = [], [], []
        for span in spans:
            row_idx += [span.row] * len(span.targets)
            pos_idx += range(span.start, span.start + len(span.targets))
            targets += span.targets
        row_t = torch.tensor(row_idx, device=self.device)
        pos_t = torch.tensor(pos_idx, device=self.device)
        if self._split_head:
            hidden = self.model.get_decoder()(**forward_kwargs).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[row_t, pos_t])
        else:
            logits = self.model(**forward_kwargs).logits[row_t, pos_t]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target_t = torch.tensor(targets, device=self.device)
        token_lp = logprobs.gather(1, target_t[:, None])[:, 0]
        greedy = logprobs.argmax(-1) == target_t
        finite = torch.isfinite(logprobs).all(-1)
        out, start = [], 0
        for span in spans:
            end = start + len(span.targets)
            out.append(Scored(token_lp[start:end].sum().item(), bool(greedy[start:end].all()), bool(finite[start:end].all())))
            start = end
        return out

    # --- shared prefixes ------------------------------------------------------------------
    def _score_sharing(self, cache, n_prefix: int, rows: list[Row], finish: Finish) -> None:
        """Score rows that follow a prefix already in `cache` (None: no prefix), forwarding shared tokens once.

        A row's shareable tokens end before its first scored position: that position's token must be
        forwarded with the row, since its output predicts the continuation's first token. Groups found here
        extend the cache by their common tokens and recurse, so a fixed demonstration prefix and then each
        question's own context are both forwarded once.
        """
        shareable = [r.tokens[: len(r.tokens) - len(r.continuation)] for r in rows]
        groups, alone = group_shared_prefixes(shareable, self.min_shared_prefix)
        for shared, members in groups:
            sub = self._extend_cache(cache, n_prefix, rows[members[0]].tokens[:shared])
            self._score_sharing(sub, n_prefix + shared, [rows[m]._replace(tokens=rows[m].tokens[shared:]) for m in members], finish)
            del sub
        if not alone:
            return
        if cache is None:
            self._score_plain([rows[m].index for m in alone], *self._plain_inputs([rows[m] for m in alone]), finish)
            return
        # Each row's copy of the cache holds prefix + suffix positions: budget the batch on both.
        sizes = [n_prefix + len(rows[m].tokens) for m in alone]
        for batch in plan_batches(sizes, self.budget.max_rows, self.budget.tokens):
            members = [rows[alone[j]] for j in batch]
            for done, scored in run_splitting_on_oom(members, lambda b: self._score_against_prefix(cache, n_prefix, b), self.budget):
                finish([r.index for r in done], scored)

    @staticmethod
    def _plain_inputs(rows: list[Row]) -> tuple[dict[int, Encoded], dict[int, int]]:
        """Rows with no shared prefix, as Encoded (the input already left-truncated) and lengths, keyed by index."""
        encoded = {r.index: Encoded(r.tokens[: len(r.tokens) - len(r.continuation) + 1], r.continuation) for r in rows}
        return encoded, {i: len(e.context) + len(e.continuation) - 1 for i, e in encoded.items()}

    @torch.no_grad()
    def _extend_cache(self, cache, n_prefix: int, tokens: list[int]):
        """A new cache: `cache` (or nothing) followed by `tokens`, forwarded once as a single row."""
        self.tokens_forwarded += len(tokens)
        ids = torch.tensor([tokens], device=self.device)
        if cache is None:
            return self._cache_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1))
        cache = copy.deepcopy(cache)
        positions = torch.arange(n_prefix, n_prefix + len(tokens), device=self.device)[None]
        return self._cache_of(self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}))

    @torch.no_grad()
    def _score_against_prefix(self, prefix_cache, n_prefix: int, rows: list[Row]) -> list[Scored]:
        ids = self._right_padded([r.tokens for r in rows])  # after the shared prefix
        positions = torch.arange(n_prefix, n_prefix + ids.shape[1])[None].expand(len(rows), -1)
        self.tokens_forwarded += sum(len(r.tokens) for r in rows)
        cache = copy.deepcopy(prefix_cache)  # each batch extends its own copy; the prefix stays reusable
        cache.batch_repeat_interleave(len(rows))
        kwargs = dict(
            input_ids=ids.to(self.device), position_ids=positions.to(self.device), use_cache=True, **{self._cache_arg: cache},
        )
        spans = [Span(b, len(r.tokens) - len(r.continuation), r.continuation) for b, r in enumerate(rows)]
        return self._score_positions(kwargs, spans)
