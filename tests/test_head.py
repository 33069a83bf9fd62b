"""Target log-probs from the output head a vocabulary slice at a time (models/head.py) against a full log_softmax."""

import torch
import torch.nn.functional as F

from icl_eval.models.head import CPU_POSITIONS, CPU_SLICE, head_slices, logit_slices, score_targets


def reference(logits: torch.Tensor, targets: torch.Tensor):
    logprobs = torch.log_softmax(logits, -1)
    return logprobs.gather(1, targets[:, None])[:, 0], logprobs.argmax(-1) == targets


def test_sliced_scores_equal_a_full_log_softmax_for_every_slice_and_block_size():
    torch.manual_seed(0)
    head, hidden = torch.nn.Linear(16, 1003), torch.randn(37, 16) * 3  # with a bias
    with torch.no_grad():
        logits = head(hidden)
    targets = torch.randint(0, 1003, (37,))
    targets[:5] = logits[:5].argmax(-1)  # some targets are the greedy pick
    targets[5] = 1002  # in the last, partial slice
    want_lp, want_greedy = reference(logits, targets)
    assert want_greedy.sum() >= 5
    # A linear head computes only each slice's rows; any other head (here wrapped) the whole vocabulary.
    for slicing in (head_slices(head), head_slices(torch.nn.Sequential(head))):
        for vocab_slice, positions in [(None, None), (1003, 7), (100, None), (64, 1), (1, 37), (2048, 4)]:
            with torch.no_grad():
                got = score_targets(slicing.logits_of, hidden, targets, 1003, vocab_slice, positions)
            torch.testing.assert_close(got.logprob, want_lp, atol=1e-5, rtol=1e-5)
            assert torch.equal(got.greedy, want_greedy), (vocab_slice, positions)
            assert got.finite.all()


def test_a_tie_for_the_maximum_goes_to_the_lowest_id_across_slices():
    logits = torch.zeros(3, 10)
    logits[:, 2] = logits[:, 7] = 5.0  # tied maximum, in different slices of 4
    targets = torch.tensor([2, 7, 0])
    got = score_targets(logit_slices, logits, targets, 10, 4)
    assert got.greedy.tolist() == [True, False, False]
    assert got.greedy.tolist() == (torch.argmax(logits, -1) == targets).tolist()


def test_nan_or_positive_inf_anywhere_in_a_row_makes_its_score_not_finite():
    logits = torch.randn(4, 12)
    logits[0, 3] = float("nan")
    logits[1, 11] = float("inf")
    logits[2, 5] = float("-inf")  # the target itself has probability 0
    targets = torch.tensor([0, 0, 5, 0])
    got = score_targets(logit_slices, logits, targets, 12, 5)
    assert got.finite.tolist() == [False, False, False, True]


def test_no_positions_give_empty_scores():
    got = score_targets(logit_slices, torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), 8, 3)
    assert got.logprob.shape == got.greedy.shape == (0,)


def test_only_a_linear_head_on_a_cpu_is_read_in_cpu_sized_slices():
    head = torch.nn.Linear(4, 10)
    assert head_slices(head, on_cpu=True)[1:] == (CPU_SLICE, CPU_POSITIONS)
    assert head_slices(head)[1:] == head_slices(torch.nn.Sequential(head), on_cpu=True)[1:] == (None, None)
