"""Cycle data for the daily adapter: holdout in time, new-event targets, replay from older history only,
new items, and no event at or after as_of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specrec.clock import Cycle
from specrec.lora.data import cycle_data

START = pd.Timestamp("2018-01-01", tz="UTC")
CYCLE = Cycle(1, START, START + pd.Timedelta("28D"))
CUTOFF = START


def _events(seed: int = 0, n_users: int = 12, per_user: int = 60) -> pd.DataFrame:
    """Users with events spread over 100 days before the cycle and through it; items 1..80 old, 81..90 new."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        days = np.sort(rng.uniform(-100, 28, per_user))
        for d in days:
            new = d >= 0 and rng.random() < 0.3
            item = int(rng.integers(81, 91)) if new else int(rng.integers(1, 81))
            rows.append((u, item, START + pd.Timedelta(float(d), unit="D")))
    ev = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).sort_values("timestamp")
    return ev.assign(event_id=np.arange(len(ev))).reset_index(drop=True)


def _targets(windows: list) -> list[int]:  # type: ignore[type-arg]
    return sorted(int(t) for w in windows for t in w.timestamps[w.first_target :])


def test_holdout_targets_replay_and_new_items() -> None:
    ev = _events()
    data = cycle_data(ev, CYCLE, CUTOFF, max_len=20, holdout_share=0.2, replay_share=0.5, seed=0)
    in_cycle = ev[ev["timestamp"] >= START]
    assert data.holdout.start > START and data.holdout.as_of == CYCLE.as_of
    assert data.holdout_events == int((in_cycle["timestamp"] >= data.holdout.start).sum())
    assert abs(data.holdout_events - 0.2 * len(in_cycle)) <= 1
    train = in_cycle[in_cycle["timestamp"] < data.holdout.start]
    assert data.new_events == len(train)
    # every training event of the cycle that has an earlier event of its user is a target, exactly once
    first_of_user = ev.groupby("user_idx")["timestamp"].transform("min") == ev["timestamp"]
    expected = train[~first_of_user.loc[train.index]]["timestamp"].astype("int64") // 1_000_000_000
    assert _targets(data.new_windows) == sorted(expected.tolist())
    # replay comes from before the cycle only and covers about as many targets as the new events
    start_s = START.value // 1_000_000_000
    assert all(int(w.timestamps.max()) < start_s for w in data.replay_windows)
    new_targets = sum(w.n_targets for w in data.new_windows)
    assert new_targets <= data.replay_targets < new_targets + 21
    assert data.new_items == sorted(set(train["item_idx"]) & set(range(81, 91)))


def test_window_supervision_and_cycle_items() -> None:
    """supervise window: the same windows, every position a target (the new events and their context)."""
    ev = _events()
    new = cycle_data(ev, CYCLE, CUTOFF, 20, holdout_share=0.2, replay_share=0.0, seed=0)
    whole = cycle_data(ev, CYCLE, CUTOFF, 20, holdout_share=0.2, replay_share=0.0, seed=0, supervise="window")
    assert [w.items.tolist() for w in whole.new_windows] == [w.items.tolist() for w in new.new_windows]
    assert all(w.first_target == 1 for w in whole.new_windows)
    assert set(_targets(new.new_windows)) < set(_targets(whole.new_windows))
    assert whole.new_events == new.new_events  # what the cycle brought is counted the same way
    train = ev[(ev["timestamp"] >= START) & (ev["timestamp"] < new.holdout.start)]
    assert new.cycle_items == sorted(set(train["item_idx"].tolist()))  # old items too, not only new ones
    assert set(new.new_items) < set(new.cycle_items)


def test_validation_users_are_held_out_of_training() -> None:
    ev = _events(n_users=20)
    data = cycle_data(ev, CYCLE, CUTOFF, 20, 0.2, 0.0, seed=0, supervise="window", val_share=0.25)
    assert len(data.val_users) == 5 and data.val_span is not None and data.val_events is not None
    assert (data.val_span.start, data.val_span.as_of) == (START, data.holdout.start)
    assert set(data.val_events["user_idx"]) == set(data.val_users)  # their history, nobody else's
    assert data.val_events["timestamp"].max() < data.holdout.start  # nothing of the gate's holdout
    val_s = set(data.val_events["timestamp"].astype("int64") // 1_000_000_000)
    assert not val_s & set(_targets(data.new_windows))  # no validation user's event is trained on
    train = ev[(ev["timestamp"] >= START) & (ev["timestamp"] < data.holdout.start)]
    assert data.new_events == int((~train["user_idx"].isin(data.val_users)).sum())
    none = cycle_data(ev, CYCLE, CUTOFF, 20, 0.2, 0.0, seed=0, supervise="window")
    assert none.val_users == [] and none.val_events is None and none.new_events == len(train)


def test_no_holdout_and_no_replay() -> None:
    data = cycle_data(_events(), CYCLE, CUTOFF, 20, holdout_share=0.0, replay_share=0.0, seed=0)
    assert data.holdout.start == CYCLE.as_of and data.holdout_events == 0 and data.replay_windows == []


def test_events_at_or_after_as_of_are_refused() -> None:
    ev = _events()
    late = ev.iloc[[0]].assign(timestamp=CYCLE.as_of, event_id=10**6)
    with pytest.raises(ValueError, match="at or after as_of"):
        cycle_data(pd.concat([ev, late]), CYCLE, CUTOFF, 20, 0.2, 0.5, 0)


def test_train_since_base_cutoff_takes_every_event_since_the_cutoff() -> None:
    """train_since base_cutoff: the new events start at the base's cutoff (30 days before the cycle here);
    replay comes from before the cutoff; the holdout is the cycle's newest events as with `cycle`."""
    ev = _events(n_users=20)
    cutoff = START - pd.Timedelta("30D")
    cyc = cycle_data(ev, CYCLE, cutoff, 20, 0.2, 0.5, seed=0)
    since = cycle_data(ev, CYCLE, cutoff, 20, 0.2, 0.5, seed=0, train_since="base_cutoff")
    assert (since.holdout.start, since.holdout_events) == (cyc.holdout.start, cyc.holdout_events)
    train = ev[(ev["timestamp"] >= cutoff) & (ev["timestamp"] < since.holdout.start)]
    assert since.new_events == len(train) > cyc.new_events
    first_of_user = ev.groupby("user_idx")["timestamp"].transform("min") == ev["timestamp"]
    expected = train[~first_of_user.loc[train.index]]["timestamp"].astype("int64") // 1_000_000_000
    assert _targets(since.new_windows) == sorted(expected.tolist())
    cutoff_s = cutoff.value // 1_000_000_000
    assert since.replay_windows and all(int(w.timestamps.max()) < cutoff_s for w in since.replay_windows)
    assert since.cycle_items == sorted(set(train["item_idx"].tolist()))
    val = cycle_data(ev, CYCLE, cutoff, 20, 0.2, 0.0, 0, val_share=0.25, train_since="base_cutoff")
    assert val.val_span is not None and val.val_span.start == cutoff
    with pytest.raises(ValueError, match="train_since 'week'"):
        cycle_data(ev, CYCLE, cutoff, 20, 0.2, 0.5, 0, train_since="week")
