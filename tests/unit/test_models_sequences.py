"""Leave-one-out splitting and left-padded batching."""

import numpy as np
import pytest

from models.sequences import Sequences, leave_one_out, make_training_batch, pad_left


def test_leave_one_out_follows_the_contract() -> None:
    seqs = Sequences([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], [np.arange(5), np.arange(2)])
    train, valid, test = leave_one_out(seqs)
    assert len(train) == 1  # the 2-event user cannot give train, valid and test
    assert train.items[0].tolist() == [1, 2, 3]
    assert valid.histories.items[0].tolist() == [1, 2, 3] and valid.targets.tolist() == [4]
    assert test.histories.items[0].tolist() == [1, 2, 3, 4] and test.targets.tolist() == [5]
    assert test.histories.timestamps[0].tolist() == [0, 1, 2, 3]


def test_pad_left_keeps_the_most_recent_events() -> None:
    out = pad_left([np.array([1, 2, 3]), np.array([4])], 2)
    assert out.tolist() == [[2, 3], [0, 4]]


def test_training_batch_targets_are_next_items() -> None:
    seqs = Sequences([np.array([1, 2, 3, 4]), np.array([5, 6])], [np.arange(4), np.arange(2)])
    b = make_training_batch(seqs, np.array([0, 1]), max_len=2)
    assert b.items.tolist() == [[2, 3], [0, 5]]
    assert b.targets.tolist() == [[3, 4], [0, 6]]
    assert b.n_targets() == 3


def test_sequences_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="user 0 has 2 items but 1 timestamps"):
        Sequences([np.array([1, 2])], [np.array([0])])
