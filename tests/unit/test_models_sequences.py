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


def test_random_windows_cover_a_long_history_and_keep_next_item_targets() -> None:
    items = [np.arange(1, 31), np.array([5, 6, 7])]  # one long history (30 events), one short
    seqs = Sequences(items, [np.arange(30) * 10, np.arange(3) * 10])
    rng = np.random.default_rng(0)
    seen_targets: set[int] = set()
    for _ in range(200):
        batch = make_training_batch(seqs, np.array([0, 1]), max_len=4, rng=rng)
        long_in, long_tg = batch.items[0].numpy(), batch.targets[0].numpy()
        assert (long_tg == long_in + 1).all()  # a contiguous window: every target is the next event
        seen_targets.update(long_tg.tolist())
        short_tg = batch.targets[1].numpy()
        assert short_tg[short_tg > 0].tolist() == [6, 7]  # short histories are never cut
    assert seen_targets == set(range(2, 31))  # over the draws every event after the first is a target
    newest = make_training_batch(seqs, np.array([0]), max_len=4)
    assert newest.targets[0].tolist() == [27, 28, 29, 30]  # without rng: the newest window
