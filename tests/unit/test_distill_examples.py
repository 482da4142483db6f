"""Distillation examples: which events become examples, with which histories (specrec.online.distill_data)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from specrec.online.distill_data import _user_examples


def _events() -> pd.DataFrame:
    """User 1: items 10..14 (older user); user 2: items 20..22 (newest user); user 3: one event."""
    rows = [(1, 10 + k, f"2018-01-0{1 + k}") for k in range(5)]
    rows += [(2, 20 + k, f"2018-01-0{5 + k}") for k in range(3)]
    rows += [(3, 30, "2018-01-02")]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["event_id"] = np.arange(len(frame))
    return frame


def test_one_example_per_user_by_default_newest_user_first() -> None:
    seqs, labels = _user_examples(_events(), max_examples=100, max_len=50)
    assert labels.tolist() == [22, 14]  # user 3 has no history before its only event
    assert seqs.items[0].tolist() == [20, 21] and seqs.items[1].tolist() == [10, 11, 12, 13]


def test_several_newest_events_per_user_each_with_its_own_history() -> None:
    seqs, labels = _user_examples(_events(), max_examples=100, max_len=2, per_user=3)
    assert labels.tolist() == [22, 21, 14, 13, 12]  # user 2 has two events with a history
    assert [s.tolist() for s in seqs.items] == [[20, 21], [20], [12, 13], [11, 12], [10, 11]]  # last max_len
    assert [len(t) for t in seqs.timestamps] == [len(s) for s in seqs.items]
    _, capped = _user_examples(_events(), max_examples=3, max_len=50, per_user=3)
    assert capped.tolist() == [22, 21, 14]
