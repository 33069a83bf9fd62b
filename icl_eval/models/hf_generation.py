"""Greedy generation for the HF backend, continuously batched: a row leaves the batch the step it stops and a
waiting row takes its place, so the batch stays full and finished rows cost nothing further.

A mixin of HFModel (models/hf.py), which supplies the model, its tokenizer and encode(), the context window
(max_length), the batch budget and the transformers-version details (_cache_arg, _cache_of).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

import torch

from icl_eval.batching import efficient_forward
from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationRequest, GenerationResult, OnResult, Progress


SLIDING = "DynamicSlidingWindowLayer"  # transformers' sliding-window cache layer
DECODE_ROWS = (8, 24)  # on a CPU, the fewest and the most rows that decode together (_decode_rows)


class Prompt(NamedTuple):
    tokens: list[int]  # the prompt as the model reads it, left-truncated to leave room for the new tokens
    left_truncated: bool


class Decoded(NamedTuple):
    raw: str  # everything decoded, stop sequence included
    text: str  # cut before the first stop sequence
    n_tokens: int


@dataclass
class Running:
    """The rows decoding together: left-padded, so every row's next token sits in the last column."""

    rows: list[int]  # request indices, one per batch row
    cache: object  # the KV cache
    mask: torch.Tensor  # attention mask, 0 over each row's left padding
    last_pos: torch.Tensor  # each row's position of its last token (rows x 1)
    next_tokens: torch.Tensor  # each row's token to feed next (rows)


class KVCacheFacts(NamedTuple):
    joinable: bool  # per-layer key/value tensors, plain or sliding-window: running batches can be joined
    window: int | None  # the narrowest sliding window (None: no sliding layers); joins stay below it
    bytes_per_token: int  # keys and values of all layers for one token


class GreedyGeneration:
    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[GenerationResult]:
        """Greedy decoding of every request until a stop sequence, EOS or its max_new_tokens.

        Out of memory (the backend's one strategy, batching.BatchBudget): the budget halves, rows in flight go
        back to the queue and run again at the smaller width; finished rows are kept and reported once.
        """
        self.budget.reset()
        prompts = []
        for r in requests:
            room = self.max_length - r.max_new_tokens
            if room < 1:
                raise IclEvalError(f"max_new_tokens {r.max_new_tokens} leaves no room for a prompt in the model's context ({self.max_length})")
            ids = self.encode(r.context) or [self.prefix_id]
            prompts.append(Prompt(ids[-room:], len(ids) > room))
        lengths = [len(p.tokens) + r.max_new_tokens for p, r in zip(prompts, requests)]
        results: list[GenerationResult | None] = [None] * len(requests)

        def finish(i: int, out: Decoded) -> None:
            results[i] = GenerationResult(out.raw, out.text, out.n_tokens, left_truncated=prompts[i].left_truncated)
            if on_result:
                on_result(i, results[i])
            if progress:
                progress(1, len(prompts[i].tokens) + out.n_tokens)

        pending = deque(sorted(range(len(requests)), key=lambda i: -lengths[i]))  # longest first: OOM shows early
        while pending:
            capacity = self._decode_rows(lengths[pending[0]])
            try:
                self._generate_stream(pending, capacity, prompts, requests, finish)
            except Exception as e:  # rows in flight went back to `pending`; finished rows are kept
                self.budget.shrink_after_oom(e, capacity)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_stream(
        self, pending: deque, capacity: int, prompts: list[Prompt], requests: Sequence[GenerationRequest], finish: Callable[[int, Decoded], None]
    ) -> None:
        """Decode until `pending` is empty, at most `capacity` rows at a time; waiting rows join as others stop.

        Joining rows come from a pool of prefilled ones (`ready`), refilled in forwards large enough to be
        efficient: rows leave a few at a time, and prefilling just those (one to three TriviaQA prompts on
        Gemma 3) spent a sixth of each forward on its fixed cost. A joining group's KV cache is padded on
        the left to the running batch's width (or the batch's to its).
        """
        batch: Running | None = None
        ready: Running | None = None  # prefilled rows waiting for a place in the batch
        joining: list[int] = []  # rows taken from `pending` and not yet prefilled
        decoders: dict[int, _StopDecoder] = {}
        eos = self.tokenizer.eos_token_id
        try:
            while pending or ready or batch:
                free = capacity - (len(batch.rows) if batch else 0)
                waiting = len(ready.rows) if ready else 0
                joins = batch is None or (free >= max(1, capacity // 4) and self._can_join(batch, ready, pending, max(0, free - waiting), prompts))
                if (pending or ready) and joins:
                    if pending and waiting < free:
                        joining = [pending.popleft() for _ in range(self._rows_to_prefill(ready, pending, free - waiting, capacity, prompts))]
                        for i in joining:
                            decoders[i] = _StopDecoder(self.tokenizer, requests[i].until, requests[i].max_new_tokens)
                        for new in self._prefills(joining, [prompts[i].tokens for i in joining]):
                            ready = new if ready is None else _joined(ready, new)
                            joining = [i for i in joining if i not in new.rows]  # prefilled now: not re-queued twice
                    taken, ready = _split(ready, free)
                    batch = taken if batch is None else _joined(batch, taken)
                keep = [k for k, (i, tok) in enumerate(zip(batch.rows, batch.next_tokens.tolist())) if not decoders[i].push(tok, eos)]
                for i in batch.rows:
                    if decoders[i].done:
                        finish(i, decoders.pop(i).result())
                if len(keep) < len(batch.rows):
                    if not keep:
                        batch = None
                        continue
                    batch = self._select(batch, keep)
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
                batch.last_pos = batch.last_pos + 1
                self.tokens_forwarded += len(batch.rows)
                out = self.model(
                    input_ids=batch.next_tokens[:, None], attention_mask=batch.mask, position_ids=batch.last_pos, use_cache=True, **{self._cache_arg: batch.cache}
                )
                batch.next_tokens = out.logits[:, -1].argmax(-1)
        except BaseException:
            # Unfinished rows start again (a prefill that failed included); finished ones were reported.
            pending.extendleft(reversed((batch.rows if batch else []) + (ready.rows if ready else []) + joining))
            raise

    def _can_join(self, batch: Running, ready: Running | None, pending: deque, more: int, prompts: list[Prompt]) -> bool:
        """Whether the pool and the next `more` waiting rows can join the running batch: a cache of plain
        layers always can; sliding-window layers (Gemma 3's 512 tokens) can while the joined batch stays
        narrower than the window, as then they hold every token, exactly as a plain layer would."""
        return self._joins_at(max(batch.mask.shape[1], _widest(ready, islice(pending, more), prompts))) and _keeps_every_token(batch.cache)

    def _joins_at(self, width: int) -> bool:
        kv = self._kv_cache()
        return kv.joinable and (kv.window is None or width < kv.window)

    def _rows_to_prefill(self, ready: Running | None, pending: deque, need: int, capacity: int, prompts: list[Prompt]) -> int:
        """The `need` rows the batch has room for and, where their caches can wait in the pool to be joined
        later, more (up to half the batch) until the prefill is one efficient forward (_prefill_tokens).
        Half, as the pool's cache adds to the batch's (a tenth of the weights, _decode_rows). No rows while
        the pool holds rows these could not join (a sliding window): it empties first."""
        candidates = list(islice(pending, max(need, capacity // 2)))
        if not self._joins_at(_widest(ready, candidates, prompts)):
            return 0 if ready else min(need, len(pending))
        target = self._prefill_tokens()
        rows = tokens = 0
        for i in candidates:
            if rows >= need and (target is None or tokens + len(prompts[i].tokens) > target):
                break
            rows, tokens = rows + 1, tokens + len(prompts[i].tokens)
        return rows

    def _prefill_tokens(self) -> int | None:
        """Tokens per prefill forward: the batch budget, and on a CPU at least as many as keep the measured
        fixed cost of a forward to 5% (Gemma 3 270M, 160-token prompts at two threads: 522 tokens/s one row
        per forward, 689 four, 749 eight; a prefill keeps only the last position's logits, so the budget's
        bound on logits' memory does not apply)."""
        return efficient_forward(self.budget.tokens, self.budget.forward_cost, 0.95) if self.budget.tokens else None

    def _prefills(self, rows: list[int], prompts: list[list[int]]) -> Iterator[Running]:
        """The joining rows prefilled in forwards of _prefill_tokens, as the decode batch holds more rows than
        one efficient forward (a step forwards one token per row). A cache that cannot be joined (layers of
        other kinds, or prompts as wide as a sliding window) is prefilled in one forward."""
        if not self._joins_at(max(len(x) for x in prompts)):
            yield self._prefill(rows, prompts)
            return
        for chunk in self.budget.plan([len(x) for x in prompts], self._prefill_tokens()):
            yield self._prefill([rows[j] for j in chunk], [prompts[j] for j in chunk])

    def _decode_rows(self, longest: int) -> int:
        """Rows that decode together, each up to `longest` tokens (prompt and new tokens).

        Off a CPU, or with given rows (--batch-size N): as many whole rows as the token budget holds. On a CPU
        the budget is a forward size, which does not bound a decoding step (one token per row): there, as many
        rows as fit a KV cache of a tenth of the model's own size, within DECODE_ROWS (the fewest, as far as a
        quarter's cache holds them). A step is bound by reading the weights until several rows share the read
        (SmolLM2-135M, two threads: 61 ms a row at one row, 13 at eight, 6.2 at 24, 5.8 at 32), and a CPU's
        budget (256 tokens at one thread) held one 5-shot TriviaQA row, so rows had decoded one at a time. The cache bound keeps the memory a run adds small: a
        step's concatenation and each join hold a layer's old cache and its new one, and freed blocks stay in
        the heap, so the peak grows by about three times the cache. The cap: short rows had taken the whole
        budget's rows, and one-shot arithmetic (45-48 tokens a row) peaked above lm-eval's end to end: SmolLM2
        at 42 rows 1,338 MiB against 1,294, Gemma 3 at a tenth's 64 rows 2,098-2,140 against 2,055-2,064; at 24
        rows, in-process, 1,211-1,237 and 1,929 MiB, in the same time. (A bound by free memory had
        let 100 rows decode together: 3.0 GB peak against lm-eval's 1.5.) Prefills run in forwards of
        _prefill_tokens (_prefills).
        """
        if self.device.type != "cpu" or self.budget.max_rows is not None or self.budget.tokens is None:
            return self.budget.rows_for(longest)
        kv = self._kv_cache()
        weight_bytes = self.model.get_memory_footprint(return_buffers=False)
        row_bytes = longest * max(1, kv.bytes_per_token)
        fewest, most = DECODE_ROWS
        # The floor only as far as a cache of a quarter of the weights: eight rows of long prompts on a large
        # model would otherwise hold more than the weights themselves.
        floor = max(1, min(fewest, weight_bytes // 4 // row_bytes))
        return min(max(weight_bytes // 10 // row_bytes, floor), most)

    @torch.no_grad()
    def _kv_cache(self) -> KVCacheFacts:
        """What this model's KV cache is like, read once from a one-token forward (not counted in
        tokens_forwarded: it scores nothing)."""
        if getattr(self, "_kv_facts", None) is None:
            ids = torch.tensor([[self.prefix_id or 0]], device=self.device)
            cache = self._cache_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1))
            layers = getattr(cache, "layers", None) or []
            tensors = [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))]
            windows = [layer.sliding_window for layer in layers if type(layer).__name__ == SLIDING]
            self._kv_facts = KVCacheFacts(_keeps_every_token(cache), min(windows, default=None), sum(t.nbytes for t in tensors if t is not None))
        return self._kv_facts

    def _prefill(self, rows: list[int], prompts: list[list[int]]) -> Running:
        """Left-padded prompts forwarded once: their cache, mask, last positions and first generated tokens."""
        width = max(len(x) for x in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, x in enumerate(prompts):
            ids[b, width - len(x) :] = torch.tensor(x)
            mask[b, width - len(x) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.tokens_forwarded += sum(len(x) for x in prompts)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return Running(rows, self._cache_of(out), mask, positions[:, -1:], out.logits[:, -1].argmax(-1))

    def _select(self, batch: Running, keep: list[int]) -> Running:
        """The batch without its finished rows, its left padding trimmed to what the remaining rows attend to."""
        keep_t = torch.tensor(keep, device=self.device)
        batch.cache.batch_select_indices(keep_t)
        cache, mask = _trim_left_padding(batch.cache, batch.mask[keep_t])
        return Running([batch.rows[k] for k in keep], cache, mask, batch.last_pos[keep_t], batch.next_tokens[keep_t])


def _widest(ready: Running | None, rows: Iterable[int], prompts: list[Prompt]) -> int:
    """The width a join would need: the pool's (padded) width and the given waiting rows' prompts."""
    return max([ready.mask.shape[1] if ready else 0, *(len(prompts[i].tokens) for i in rows)])


def _keeps_every_token(cache) -> bool:
    """Whether each layer holds one plain key/value tensor of every token so far: the dynamic layers, and
    sliding-window ones that have dropped nothing yet. Only such a cache can be joined or trimmed by slicing
    (a quantized or offloaded cache cannot)."""
    layers = getattr(cache, "layers", None)

    def whole(layer) -> bool:
        if getattr(layer, "keys", None) is None:
            return False
        kind = type(layer).__name__
        if kind == SLIDING:
            return not layer.record_past and layer.cumulative_length == layer.keys.shape[-2]
        return kind == "DynamicLayer"

    return bool(layers) and all(whole(layer) for layer in layers)


def _joined(batch: Running, other: Running) -> Running:
    """Two left-padded batches as one (KV cache and attention mask): the narrower gets more padding on the left.

    Each merged tensor is allocated once and both parts are copied into its right-aligned slices: widening
    copies first would hold three versions of a layer at once, more than a decoding step's own concatenation.
    """
    width = max(batch.mask.shape[1], other.mask.shape[1])

    def stacked(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(a.shape)
        shape[0], shape[dim] = a.shape[0] + b.shape[0], width
        out = a.new_zeros(shape)
        out[: a.shape[0]].narrow(dim, width - a.shape[dim], a.shape[dim]).copy_(a)
        out[a.shape[0] :].narrow(dim, width - b.shape[dim], b.shape[dim]).copy_(b)
        return out

    for layer, new in zip(batch.cache.layers, other.cache.layers):
        layer.keys = stacked(layer.keys, new.keys, 2)
        layer.values = stacked(layer.values, new.values, 2)
        if type(layer).__name__ == SLIDING:  # what a prefill of this width would have counted
            layer.cumulative_length = width
    return Running(
        batch.rows + other.rows, batch.cache, stacked(batch.mask, other.mask, 1),
        torch.cat([batch.last_pos, other.last_pos]), torch.cat([batch.next_tokens, other.next_tokens]),
    )


def _split(run: Running, k: int) -> tuple[Running, Running | None]:
    """Its first k rows and the rest (None if none), each with its own cache object over views of the one
    cache (the first part is copied when it joins the batch) and its left padding trimmed."""
    if k >= len(run.rows):
        return run, None
    rest = copy.copy(run.cache)
    rest.layers = [copy.copy(layer) for layer in run.cache.layers]
    for first, last in zip(run.cache.layers, rest.layers):
        first.keys, last.keys = first.keys[:k], first.keys[k:]
        first.values, last.values = first.values[:k], first.values[k:]
    parts = []
    for cache, rows in ((run.cache, slice(None, k)), (rest, slice(k, None))):
        cache, mask = _trim_left_padding(cache, run.mask[rows])
        parts.append(Running(run.rows[rows], cache, mask, run.last_pos[rows], run.next_tokens[rows]))
    return parts[0], parts[1]


def _trim_left_padding(cache, mask: torch.Tensor):
    """Drop leading columns that no remaining row attends to, so a long-running batch does not keep growing."""
    first = int(mask.any(0).nonzero()[0]) if mask.any() else 0
    if first == 0 or not _keeps_every_token(cache):
        return cache, mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        if type(layer).__name__ == SLIDING:
            layer.cumulative_length -= first
    return cache, mask[:, first:]


class _StopDecoder:
    """Detokenizes one row incrementally and watches for its stop sequences in the new text only."""

    def __init__(self, tokenizer, until: Sequence[str], max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.until = [u for u in until if u]
        self.longest_stop = max((len(u) for u in self.until), default=0)
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens before this index are already in self.text
        self._stop_at: int | None = None
        self.done = max_new_tokens == 0

    def push(self, token: int, eos: int | None) -> bool:
        """Add one generated token; True when the row is finished."""
        if self.done:
            return True
        if token == eos:
            self.done = True
            return True
        self.tokens.append(token)
        # Decode a short window and keep only what the new token added: decoding a lone suffix would drop
        # SentencePiece's leading spaces, and a character split over tokens shows as U+FFFD until complete.
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            searched_from = max(0, len(self.text) - self.longest_stop + 1)
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            hits = [i for u in self.until if (i := self.text.find(u, searched_from)) >= 0]
            if hits:
                self._stop_at = min(hits)
                self.done = True
        if len(self.tokens) >= self.max_new_tokens:
            self.done = True
        return self.done

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def result(self) -> Decoded:
        if self._read < len(self.tokens):
            before = self._decode(self.tokens[self._prefix : self._read])
            self.text += self._decode(self.tokens[self._prefix :])[len(before) :]
            self._read = len(self.tokens)
            hits = [i for u in self.until if (i := self.text.find(u)) >= 0]
            if hits:
                self._stop_at = min(hits)
        text = self.text if self._stop_at is None else self.text[: self._stop_at]
        return Decoded(self.text, text, len(self.tokens))
