"""Log-likelihood scoring for the HF backend: continuations after their contexts, rows that share leading tokens
forwarded once, and whole documents in rolling windows.

A mixin of HFModel (models/hf.py), which supplies the model, its tokenizer and encoding (encode_pairs,
prefix_id, pad_id), the context window (max_length), the batch budget and the transformers-version details
(_cache_arg, _cache_of, _split_head) and the span of sliding-window attention (_attention_window).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl_eval.batching import group_shared_prefixes, run_splitting_on_oom
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


class Pack(NamedTuple):
    """One question packed into one row: its shared context once, then each candidate's remaining tokens."""

    prefix: list[int]
    rows: list[Row]  # tokens after the prefix

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(r.tokens) for r in self.rows)


def sliding_window(config: Any) -> int | None:
    """The span of the model's sliding-window attention layers, or None where every layer sees the whole row."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(cfg, "sliding_window", None)
    if not isinstance(window, int) or window <= 0 or getattr(cfg, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(cfg, "layer_types", None)
    return window if layer_types is None or "sliding_attention" in layer_types else None


class Scored(NamedTuple):
    logprob: float  # summed over the targets
    greedy: bool  # every target was the argmax
    finite: bool  # no NaN or inf in the log-probs at the target positions


# Scored positions x vocabulary entries whose log-probs exist at once (64 MiB of float32).
_VOCAB_SLICE = 1 << 24

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
        for batch in self.budget.plan([lengths[i] for i in indices]):
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
        target_t = torch.tensor(targets, device=self.device)
        if self._split_head:
            hidden = self.model.get_decoder()(**forward_kwargs).last_hidden_state[row_t, pos_t]
            project = self.model.get_output_embeddings()
        else:
            hidden, project = self.model(**forward_kwargs).logits[row_t, pos_t], lambda x: x
        del forward_kwargs
        # Full-vocabulary log-probs for every scored position at once were the peak of a zero-shot run (four
        # [positions, vocab] float tensors for long multiple-choice endings): score them in slices instead.
        step = max(1, _VOCAB_SLICE // max(1, self._vocab_size))
        lp_parts, greedy_parts, finite_parts = [], [], []
        for at in range(0, len(targets), step):
            logprobs = torch.log_softmax(project(hidden[at : at + step]).float(), dim=-1)
            t = target_t[at : at + step]
            lp_parts.append(logprobs.gather(1, t[:, None])[:, 0])
            greedy_parts.append(logprobs.argmax(-1) == t)
            # NaN or inf anywhere makes the row's sum non-finite: one reduction instead of isfinite's passes.
            # (logit - logsumexp would be faster still, but rounds differently from log_softmax, lm-eval's op.)
            finite_parts.append(torch.isfinite(logprobs.sum(-1)))
            del logprobs
        token_lp, greedy, finite = torch.cat(lp_parts), torch.cat(greedy_parts), torch.cat(finite_parts)
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
        packs = []
        for shared, members in groups:
            pack = Pack(rows[members[0]].tokens[:shared], [rows[m]._replace(tokens=rows[m].tokens[shared:]) for m in members])
            if self._packs and self._packable(pack, n_prefix):
                packs.append(pack)
                continue
            sub = self._extend_cache(cache, n_prefix, rows[members[0]].tokens[:shared])
            self._score_sharing(sub, n_prefix + shared, [rows[m]._replace(tokens=rows[m].tokens[shared:]) for m in members], finish)
            del sub
        if packs:
            self._score_packs(cache, n_prefix, packs, finish)
        if not alone:
            return
        if cache is None:
            self._score_plain([rows[m].index for m in alone], *self._plain_inputs([rows[m] for m in alone]), finish)
            return
        # Each row's copy of the cache holds prefix + suffix positions: budget the batch on both.
        sizes = [n_prefix + len(rows[m].tokens) for m in alone]
        for batch in self.budget.plan(sizes):
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

    # --- packed rows: one question per row, no cache ----------------------------------------
    def _packable(self, pack: Pack, n_prefix: int) -> bool:
        """A group whose rows share nothing further (one question's candidates) and that fits one context window:
        packing it forwards exactly what the cache path would, in one row. Deeper tries (fixed demonstrations,
        then each question) keep the cache path, which forwards every trie node once. With sliding-window
        layers the packed mask (which has no window) is exact only if no candidate reaches past the window."""
        if pack.length > self.max_length:
            return False
        window = self._attention_window
        if window is not None and n_prefix + len(pack.prefix) + max(len(r.tokens) for r in pack.rows) > window:
            return False
        rest = [r.tokens[: len(r.tokens) - len(r.continuation)] for r in pack.rows]
        return not group_shared_prefixes(rest, self.min_shared_prefix)[0]

    def _score_packs(self, cache, n_prefix: int, packs: list[Pack], finish: Finish) -> None:
        """Packed rows in batches; after a cached prefix (fixed demonstrations) each batch reads one copy of it per
        packed row, that is per question, not per candidate."""
        sizes = [n_prefix + p.length for p in packs]
        for batch in self.budget.plan(sizes):
            run = lambda b: self._score_packed_batch(b, cache, n_prefix)  # noqa: E731
            for done, scored in run_splitting_on_oom([packs[j] for j in batch], run, self.budget):
                finish([r.index for p in done for r in p.rows], [s for group in scored for s in group])

    @torch.no_grad()
    def _score_packed_batch(self, packs: list[Pack], cache=None, n_prefix: int = 0) -> list[list[Scored]]:
        """Packed rows, right-padded, in one forward: a 4D mask lets each candidate see the context and its own
        earlier tokens only, and its positions restart after the context, so it scores as if forwarded alone."""
        ids, positions, segments, spans = self._packed_inputs(packs)
        self.tokens_forwarded += sum(p.length for p in packs)
        mask = self._packed_mask(segments.to(self.device))
        kwargs = dict(input_ids=ids.to(self.device), position_ids=(positions + n_prefix).to(self.device))
        if cache is not None:
            cache = copy.deepcopy(cache)  # the prefix stays reusable for the next batch
            cache.batch_repeat_interleave(len(packs))
            seen = torch.zeros((*mask.shape[:3], n_prefix), dtype=mask.dtype, device=mask.device)  # everyone sees the prefix
            mask = torch.cat([seen, mask], dim=-1)
            kwargs.update(use_cache=True, **{self._cache_arg: cache})
        scored = self._score_positions(dict(kwargs, attention_mask=mask), spans)
        out, start = [], 0
        for p in packs:
            out.append(scored[start : start + len(p.rows)])
            start += len(p.rows)
        return out

    def _packed_inputs(self, packs: list[Pack]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Span]]:
        """Token ids, positions and segments (0: the context, k: the k-th candidate, -1: padding) per packed row."""
        width = max(p.length for p in packs)
        ids = torch.full((len(packs), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(packs), width), dtype=torch.long)
        segments = torch.full((len(packs), width), -1, dtype=torch.long)
        spans = []
        for b, p in enumerate(packs):
            n = len(p.prefix)
            ids[b, :n] = torch.tensor(p.prefix, dtype=torch.long)
            positions[b, :n] = torch.arange(n)
            segments[b, :n] = 0
            at = n
            for k, r in enumerate(p.rows, start=1):
                m = len(r.tokens)
                ids[b, at : at + m] = torch.tensor(r.tokens, dtype=torch.long)
                positions[b, at : at + m] = torch.arange(n, n + m)
                segments[b, at : at + m] = k
                spans.append(Span(b, at + m - len(r.continuation), r.continuation))
                at += m
        return ids, positions, segments, spans

    def _packed_mask(self, segments: torch.Tensor) -> torch.Tensor:
        """Additive [batch, 1, query, key] mask: a query sees earlier keys of the context or of its own segment.
        Padding (-1) sees the context and other padding, never nothing: an all-masked row would turn to NaN and
        spread through the values."""
        width = segments.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
        visible = causal & ((segments[:, None, :] == 0) | (segments[:, :, None] == segments[:, None, :]))
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=segments.device)
        return mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[:, None]

    def _packing_matches_plain(self) -> bool:
        """Whether this model honours a 4D mask and explicit positions: a packed row of two candidates must score
        as the two rows forwarded whole. Checked once at load; False keeps the KV-cache path."""
        prefix, tails = [1, 2, 3, 4, 5], ([6, 7, 8], [9, 10])
        pack = Pack(prefix, [Row(k, t, t[-2:]) for k, t in enumerate(tails)])
        try:
            with torch.no_grad():
                ids, positions, segments, _ = self._packed_inputs([pack])
                kwargs = dict(input_ids=ids.to(self.device), position_ids=positions.to(self.device), attention_mask=self._packed_mask(segments.to(self.device)))
                packed = self.model(**kwargs).logits[0].float()
                plain = self.model(input_ids=self._right_padded([prefix + t for t in tails]).to(self.device)).logits.float()
        except Exception:  # an architecture that refuses a 4D mask or position_ids
            return False
        got = torch.cat([packed[5:8], packed[8:10]])
        want = torch.cat([plain[0, 5:8], plain[1, 5:7]])
        tol = 1e-4 if self.dtype == torch.float32 else 2e-2
        return bool(torch.allclose(got, want, atol=tol, rtol=tol * 10))
