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
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

from icl_eval.batching import group_shared_prefixes, run_splitting_on_oom
from icl_eval.errors import IclEvalError
from icl_eval.models.head import Slicing, head_slices, logit_slices, score_targets
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
    """Where one row's targets sit in a forward pass: batch row, the position predicting each target, targets."""

    row: int
    columns: Sequence[int]
    targets: list[int]


def tail_span(row: int, length: int, targets: list[int]) -> Span:
    """A row of `length` inputs whose last len(targets) positions predict the targets."""
    return Span(row, range(length - len(targets), length), targets)


class Trie(NamedTuple):
    """Candidates laid out as a token trie: shared leading tokens once, each node after its parent."""

    tokens: list[int]
    parents: list[int]  # each node's parent node, -1 for a candidate's first token
    paths: list[list[int]]  # per candidate, the node of each of its tokens


def token_trie(sequences: Sequence[Sequence[int]]) -> Trie:
    tokens: list[int] = []
    parents: list[int] = []
    paths: list[list[int]] = []
    child: dict[tuple[int, int], int] = {}
    for seq in sequences:
        node, path = -1, []
        for t in seq:
            nxt = child.get((node, t))
            if nxt is None:
                nxt = child[(node, t)] = len(tokens)
                tokens.append(t)
                parents.append(node)
            node = nxt
            path.append(node)
        paths.append(path)
    return Trie(tokens, parents, paths)


@dataclass(frozen=True)
class Pack:
    """One question packed into one row: its shared context once, then its candidates' remaining tokens as a
    trie, so tokens that several candidates open with (PIQA's near-identical solutions) are forwarded and
    scored once too."""

    prefix: list[int]
    rows: list[Row]  # tokens after the prefix

    @cached_property
    def trie(self) -> Trie:
        return token_trie([r.tokens for r in self.rows])

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.trie.tokens)


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
    finite: bool  # every target's log-prob is finite (no NaN or +inf in the logits at its position)


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
        spans = [tail_span(b, len(x), r.continuation) for b, (x, r) in enumerate(zip(inputs, rows))]
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
        """Run the model and score only the positions the spans name; a (position, target) pair that several
        spans name (candidates opening with the same tokens, packed as a trie) is scored once."""
        entry: dict[tuple[int, int, int], int] = {}  # (row, column, target) -> scored entry
        owner, picks = [], []  # per span target: its span, its entry
        for k, span in enumerate(spans):
            for c, t in zip(span.columns, span.targets):
                picks.append(entry.setdefault((span.row, c, t), len(entry)))
                owner.append(k)
        rows, columns, targets = zip(*entry) if entry else ((), (), ())
        row_t, pos_t, target_t = (torch.tensor(v, dtype=torch.long, device=self.device) for v in (rows, columns, targets))
        if self._split_head:
            hidden = self.model.get_decoder()(**forward_kwargs).last_hidden_state[row_t, pos_t]
            slicing, vocab = head_slices(self.model.get_output_embeddings(), self.device.type == "cpu"), self._vocab_size
        else:
            hidden = self.model(**forward_kwargs).logits[row_t, pos_t]
            slicing, vocab = Slicing(logit_slices), hidden.shape[-1]
        del forward_kwargs
        token_lp, greedy, finite = score_targets(slicing.logits_of, hidden, target_t, vocab, slicing.vocab_slice, slicing.positions)
        picks_t, owner_t = torch.tensor(picks, dtype=torch.long, device=self.device), torch.tensor(owner, dtype=torch.long, device=self.device)
        per_span = lambda x: torch.zeros(len(spans), dtype=x.dtype, device=x.device).index_add_(0, owner_t, x[picks_t]).tolist()  # noqa: E731
        # float64 sums: a float32 total of a few hundred tokens (a rolling window) rounds at ~1e-4
        sums, misses, bad = per_span(token_lp.double()), per_span((~greedy).int()), per_span((~finite).int())
        return [Scored(lp, miss == 0, b == 0) for lp, miss, b in zip(sums, misses, bad)]

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
        spans = [tail_span(b, len(r.tokens), r.continuation) for b, r in enumerate(rows)]
        return self._score_positions(kwargs, spans)

    # --- packed rows: one question per row, no cache ----------------------------------------
    def _packable(self, pack: Pack, n_prefix: int) -> bool:
        """A group whose rows share nothing further before their scored tokens (one question's candidates) and that
        fits one context window: packing it forwards what the cache path would, in one row, or less where
        candidates open with the same tokens (the trie). Deeper tries (fixed demonstrations,
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
        earlier tokens only, and its positions continue from the context, so it scores as if forwarded alone."""
        ids, positions, visible, spans = self._packed_inputs(packs)
        self.tokens_forwarded += sum(p.length for p in packs)
        mask = self._packed_mask(visible.to(self.device))
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
        """Token ids, positions, which keys each query sees ([batch, query, key]) and the spans, per packed row:
        the context, then the candidates' trie, whose nodes see the context and their ancestors only and whose
        positions continue their parent's. Padding sees the context and itself, never nothing: an all-masked
        row would turn to NaN and spread through the values."""
        width = max(p.length for p in packs)
        ids = np.full((len(packs), width), self.pad_id, dtype=np.int64)
        positions = np.zeros((len(packs), width), dtype=np.int64)
        visible = np.zeros((len(packs), width, width), dtype=bool)
        spans = []
        for b, p in enumerate(packs):
            n, trie = len(p.prefix), p.trie
            ids[b, :n], positions[b, :n] = p.prefix, np.arange(n)
            visible[b, :n, :n] = np.tri(n, dtype=bool)
            for j, (token, parent) in enumerate(zip(trie.tokens, trie.parents)):
                col = n + j
                ids[b, col] = token
                if parent < 0:
                    positions[b, col], visible[b, col, :n] = n, True
                else:
                    positions[b, col], visible[b, col] = positions[b, n + parent] + 1, visible[b, n + parent]
                visible[b, col, col] = True
            end = n + len(trie.tokens)
            visible[b, end:, :n] = True
            visible[b, range(end, width), range(end, width)] = True
            for r, path in zip(p.rows, trie.paths):
                spans.append(Span(b, [n + j for j in path[len(path) - len(r.continuation) :]], r.continuation))
        return torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(visible), spans

    def _packed_mask(self, visible: torch.Tensor) -> torch.Tensor:
        """The additive [batch, 1, query, key] mask of a boolean [batch, query, key] visibility."""
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=visible.device)
        return mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[:, None]

    def _packing_matches_plain(self) -> bool:
        """Whether this model honours a 4D mask and explicit positions: a packed row of two candidates must score
        as the two rows forwarded whole. Checked once at load; False keeps the KV-cache path."""
        prefix, tails = [1, 2, 3, 4, 5], ([6, 7, 8], [9, 10])
        pack = Pack(prefix, [Row(k, t, t[-2:]) for k, t in enumerate(tails)])
        try:
            with torch.no_grad():
                ids, positions, visible, _ = self._packed_inputs([pack])
                kwargs = dict(input_ids=ids.to(self.device), position_ids=positions.to(self.device), attention_mask=self._packed_mask(visible.to(self.device)))
                packed = self.model(**kwargs).logits[0].float()
                plain = self.model(input_ids=self._right_padded([prefix + t for t in tails]).to(self.device)).logits.float()
        except Exception:  # an architecture that refuses a 4D mask or position_ids
            return False
        got = torch.cat([packed[5:8], packed[8:10]])
        want = torch.cat([plain[0, 5:8], plain[1, 5:7]])
        tol = 1e-4 if self.dtype == torch.float32 else 2e-2
        return bool(torch.allclose(got, want, atol=tol, rtol=tol * 10))
