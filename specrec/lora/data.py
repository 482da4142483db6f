"""What one daily fine-tuning cycle trains and is judged on, cut from the events known at as_of.

The cycle's events are split in time: the newest `holdout_share` are the gate's holdout (never trained
on), the rest are the new training events. Training windows cover every new event as a target with the
user's earlier events as context, plus an experience-replay sample of windows from older history (the
events before the cycle) so the adapter does not forget what the base knew.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.lora import Window, user_windows
from specrec.clock import Cycle
from specrec.config import LORA_TRAIN_SINCE


@dataclass(frozen=True)
class CycleData:
    """The training windows of a cycle and the holdout window the gate scores."""

    new_windows: list[Window]
    replay_windows: list[Window]
    # training events since the cycle's start (or the base's cutoff, train_since base_cutoff): the targets
    # of new_windows, users' first events aside
    new_events: int
    holdout: Cycle  # [holdout start, as_of): the newest events, scored by next_event_metrics
    holdout_events: int
    new_items: list[int]  # item_idx first seen in [cutoff, train end)
    cycle_items: list[int] = field(default_factory=list)  # item_idx of the new training events
    # users whose new events are held out of training to choose the epoch (val_share); their events in
    # val_span ([start of the new events, holdout start)) are scored with `val_events` (those users'
    # known events) as history
    val_users: list[int] = field(default_factory=list)
    val_events: pd.DataFrame | None = None
    val_span: Cycle | None = None

    @property
    def windows(self) -> list[Window]:
        """New and replay windows together."""
        return self.new_windows + self.replay_windows

    @property
    def replay_targets(self) -> int:
        """Supervised targets drawn from older history."""
        return sum(w.n_targets for w in self.replay_windows)


def holdout_start(cycle_events: pd.DataFrame, cycle: Cycle, share: float) -> pd.Timestamp:
    """The time from which the newest `share` of the cycle's events are held out (cycle.as_of if none)."""
    if cycle_events.empty or share <= 0:
        return cycle.as_of
    ts = cycle_events["timestamp"].sort_values(kind="stable").reset_index(drop=True)
    n_hold = max(1, int(round(len(ts) * share)))
    return ts.iloc[len(ts) - n_hold]


def new_items(known: pd.DataFrame, cutoff: pd.Timestamp) -> list[int]:
    """Items whose first known event is at or after the base's training cutoff."""
    first = known.groupby("item_idx")["timestamp"].min()
    return sorted(int(i) for i in first.index[first >= cutoff])


def _per_user(events: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per user: time-ordered item_idx, unix seconds and timestamps (as int64 ns)."""
    ordered = events.sort_values(["user_idx", "timestamp", "event_id"], kind="stable")
    ns = ordered["timestamp"].astype("int64").to_numpy()
    items, users = ordered["item_idx"].to_numpy(np.int64), ordered["user_idx"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    return {
        int(users[a]): (items[a:b], ns[a:b] // 1_000_000_000, ns[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    }


def new_event_windows(
    known: pd.DataFrame, start: pd.Timestamp, max_len: int, supervise: str = "new"
) -> tuple[list[Window], int]:
    """Windows whose targets are every event at or after `start`, and the number of such events.

    supervise `new`: only those events are targets, the earlier ones context. `window`: every position of
    those windows is a target (a user's earlier events too, as the base's own training had them)."""
    windows, n_new = [], 0
    for items, secs, ns in _per_user(known).values():
        first_new = int(np.searchsorted(ns, start.value, side="left"))
        if first_new < len(items):
            n_new += len(items) - first_new
            found = user_windows(items, secs, first_new, max_len)
            if supervise == "window":
                found = [Window(w.items, w.timestamps, 1) for w in found]
            windows += found
    return windows, n_new


def replay_windows(
    older: pd.DataFrame, n_targets: int, max_len: int, rng: np.random.Generator
) -> list[Window]:
    """Random windows from older history (users drawn by activity, random end) until n_targets are covered."""
    users = [(items, secs) for items, secs, _ in _per_user(older).values() if len(items) >= 2]
    if not users or n_targets <= 0:
        return []
    weights = np.array([len(i) for i, _ in users], dtype=np.float64)
    out, covered = [], 0
    while covered < n_targets:
        items, secs = users[int(rng.choice(len(users), p=weights / weights.sum()))]
        end = int(rng.integers(2, len(items) + 1))
        start = max(0, end - (max_len + 1))
        window = Window(items[start:end], secs[start:end], 1)
        out.append(window)
        covered += window.n_targets
    return out


def cycle_data(
    known: pd.DataFrame,
    cycle: Cycle,
    cutoff: pd.Timestamp,
    max_len: int,
    holdout_share: float,
    replay_share: float,
    seed: int,
    supervise: str = "new",
    val_share: float = 0.0,
    train_since: str = "cycle",
) -> CycleData:
    """Training windows (new + replay) and the holdout of the cycle ending at cycle.as_of (`supervise`: see
    new_event_windows); with `val_share`, that share of the users with new training events (drawn with
    `seed`) is held out of the new windows to validate each epoch on.

    The new training events are those in [start, holdout start), start being the cycle's start
    (`train_since` cycle) or the base's training cutoff (`base_cutoff`); replay windows come from before
    start. The holdout is the cycle's newest events either way."""
    if len(known) and known["timestamp"].max() >= cycle.as_of:
        raise ValueError(f"events at or after as_of {cycle.as_of.isoformat()} were passed to cycle_data")
    if train_since not in LORA_TRAIN_SINCE:
        raise ValueError(f"train_since {train_since!r}: use one of {LORA_TRAIN_SINCE}")
    start = cutoff if train_since == "base_cutoff" else cycle.start
    in_cycle = known[known["timestamp"] >= cycle.start]
    hold_from = holdout_start(in_cycle, cycle, holdout_share)
    train = known[known["timestamp"] < hold_from]
    active = np.unique(train.loc[train["timestamp"] >= start, "user_idx"].to_numpy())
    n_val = int(round(len(active) * val_share))
    val_users = (
        np.sort(np.random.default_rng(seed + 1).choice(active, n_val, replace=False)) if n_val else active[:0]
    )
    is_val = train["user_idx"].isin(val_users).to_numpy()
    fit = train[~is_val]
    new, n_new = new_event_windows(fit, start, max_len, supervise)
    n_new_targets = sum(w.n_targets for w in new)
    n_replay = int(round(n_new_targets * replay_share / (1 - replay_share)))
    older = known[known["timestamp"] < start]
    replay = replay_windows(older, n_replay, max_len, np.random.default_rng(seed))
    return CycleData(
        new_windows=new,
        replay_windows=replay,
        new_events=n_new,
        holdout=Cycle(cycle.index, hold_from, cycle.as_of),
        holdout_events=int((in_cycle["timestamp"] >= hold_from).sum()),
        new_items=new_items(train, cutoff),
        cycle_items=sorted(int(i) for i in fit.loc[fit["timestamp"] >= start, "item_idx"].unique()),
        val_users=[int(u) for u in val_users],
        val_events=train[is_val] if n_val else None,
        val_span=Cycle(cycle.index, start, hold_from) if n_val else None,
    )
