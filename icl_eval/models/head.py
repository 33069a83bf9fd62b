"""Log-probabilities of target tokens at scored positions, the vocabulary taken a slice at a time.

A full [positions, vocabulary] log-softmax is never built: each slice of the output head yields its logits'
log-sum-exp, maximum and (where a target falls inside it) the target's logit, and the slices combine exactly.
On a CPU that lets every slice of the head's weight be read once for all positions: with the earlier
64-position blocks of full-vocabulary logits, Gemma 3's 262k-row head ran at ~90 GFLOP/s against ~180 for
2,048-row slices (two threads, 640 hidden), because the 671 MB weight was streamed from memory per block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

# Logits held at once: positions x slice entries (64 MiB of float32).
_MAX_LOGITS = 1 << 24
# CPU: head rows per slice and positions per block. In a sweep of 1,024-32,768 rows x 128 positions to all
# at Gemma 3's and SmolLM2's shapes (two threads), 2,048-4,096 x 1,024 or more came out fastest, within the
# noise of each other: the slice's logits stay in the last-level cache.
CPU_SLICE, CPU_POSITIONS = 2048, 1024


LogitsOf = Callable[[torch.Tensor, int, int], torch.Tensor]  # (rows, start, end) -> logits of entries start..end-1


class Slicing(NamedTuple):
    """How score_targets reads a head: its logits for a vocabulary slice, and the slice and block sizes."""

    logits_of: LogitsOf
    vocab_slice: int | None = None  # None: the whole vocabulary at once
    positions: int | None = None  # None: as many positions as 64 MiB of logits hold


def head_slices(head: torch.nn.Module, on_cpu: bool = False) -> Slicing:
    """An output head read a vocabulary slice at a time: a linear layer multiplies by that slice of its weight
    only and, on a CPU, reads each slice once for all positions (CPU_SLICE x CPU_POSITIONS); any other head
    computes the whole vocabulary and is sliced."""
    if isinstance(head, torch.nn.Linear):
        of = lambda h, a, b: F.linear(h, head.weight[a:b], None if head.bias is None else head.bias[a:b])  # noqa: E731
        return Slicing(of, CPU_SLICE, CPU_POSITIONS) if on_cpu else Slicing(of)
    return Slicing(lambda h, a, b: head(h)[:, a:b])


def logit_slices(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The slice of logits already computed (a model whose head cannot run apart from its forward)."""
    return logits[:, start:end]


class TargetScores(NamedTuple):
    logprob: torch.Tensor  # [positions] log p(target), float32
    greedy: torch.Tensor  # [positions] the target is the (first) argmax
    finite: torch.Tensor  # [positions] the log-prob is finite (NaN or +inf anywhere in the logits makes it not)


def score_targets(
    logits_of: LogitsOf,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    vocab_slice: int | None = None,
    positions: int | None = None,
) -> TargetScores:
    """Scores `targets` at the positions whose rows `hidden` holds.

    `logits_of(h, start, end)` gives the logits of vocabulary entries start..end-1 for rows h (the head's
    weight slice, or a slice of logits already computed). `vocab_slice` defaults to the whole vocabulary and
    `positions` to as many as keep the logits within 64 MiB. The log-probs come within ~2e-6 per token of a
    float64 log-softmax of the same logits; torch's float32 log_softmax on a CPU (lm-eval's op) is ~8e-6 per
    token high (a 138-token SmolLM2 PIQA solution: +1.1e-3 against -2.5e-6 here). Argmax ties break to the
    lowest id, as torch's do.
    """
    vocab_slice = min(vocab_slice or vocab_size, vocab_size)
    positions = max(1, min(positions or _MAX_LOGITS, _MAX_LOGITS // vocab_slice))
    parts = []
    for at in range(0, hidden.shape[0], positions):
        parts.append(_score_block(logits_of, hidden[at : at + positions], targets[at : at + positions], vocab_size, vocab_slice))
    if not parts:
        empty = torch.zeros(0, device=hidden.device)
        return TargetScores(empty, empty.bool(), empty.bool())
    return TargetScores(*(torch.cat(p) for p in zip(*parts)))


def _score_block(logits_of, h: torch.Tensor, t: torch.Tensor, vocab_size: int, vocab_slice: int) -> TargetScores:
    target_logit = torch.zeros(len(t), dtype=torch.float32, device=h.device)
    lse, best, best_at = [], [], []
    for start in range(0, vocab_size, vocab_slice):
        end = min(start + vocab_slice, vocab_size)
        logits = logits_of(h, start, end).float()
        top, at = logits.max(-1)
        best.append(top)
        best_at.append(at + start)
        lse.append(torch.logsumexp(logits, -1))
        inside = ((t >= start) & (t < end)).nonzero()[:, 0]
        if len(inside):
            target_logit[inside] = logits[inside, t[inside] - start]
        del logits
    # The first slice holding the maximum: its first argmax is the whole row's (torch's tie rule).
    first = torch.stack(best, 1).argmax(1, keepdim=True)
    argmax = torch.stack(best_at, 1).gather(1, first)[:, 0]
    logprob = target_logit - torch.logsumexp(torch.stack(lse, 1), 1)
    return TargetScores(logprob, argmax == t, torch.isfinite(logprob))
