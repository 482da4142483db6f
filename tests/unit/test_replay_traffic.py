"""The replay's request sampling (whole windows, seeded, cut at the budget) and its judging of answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from specrec.replay.traffic import METRIC_KEYS, Tally, sample_windows

W = pd.Timedelta("5min")


def _events(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2018-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n)), "s")
    users, items = rng.integers(1, 20, n), rng.integers(1, 500, n)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts})


def test_windows_are_whole_time_ordered_and_cut_at_the_budget() -> None:
    events = _events(500)
    windows = sample_windows(events, W, 120, seed=3)
    sizes = [len(w.events) for w in windows]
    assert sum(sizes) == 120
    starts = [w.start for w in windows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    full = events.groupby(events["timestamp"].dt.floor(W)).size()
    cut = [w for w in windows if len(w.events) != full[w.start]]
    assert len(cut) <= 1  # only the window that reached the budget is cut
    for w in windows:
        assert ((w.events["timestamp"] >= w.start) & (w.events["timestamp"] < w.start + W)).all()
    again = sample_windows(events, W, 120, seed=3)
    assert [w.start for w in again] == starts
    assert [w.start for w in sample_windows(events, W, 120, seed=4)] != starts


def test_a_budget_above_the_events_takes_them_all_and_no_events_no_windows() -> None:
    events = _events(40)
    assert sum(len(w.events) for w in sample_windows(events, W, 1000, seed=0)) == 40
    assert sample_windows(events.iloc[:0], W, 10, seed=0) == []


def test_tally_judges_the_first_ten_items_against_the_event() -> None:
    tally = Tally()

    def body(items: list[int], **kw: object) -> dict[str, object]:
        return {"items": items, "degraded": False, "cold_start": False, "speculative_hits": 0} | kw

    tally.add(7, 2.0, body([7, 1, 2]))  # rank 1: gain 1
    tally.add(7, 4.0, body([1, 2, 7], speculative_hits=3))  # rank 3: gain 1/log2(4) = 0.5
    tally.add(7, 6.0, body(list(range(20, 30)) + [7], cold_start=True))  # 11th: a miss
    tally.add(7, 8.0, None)  # the request failed
    m = tally.metrics(12.5)
    assert tuple(m) == METRIC_KEYS
    assert m["requests"] == 4 and m["errors"] == 1 and m["degraded"] == 1
    assert math.isclose(m["hr_at_10"], 2 / 3) and math.isclose(m["ndcg_at_10"], 1.5 / 3)
    assert m["spec_hits"] == 1 and m["spec_coverage"] == 0.25
    assert m["latency_p50_ms"] == 5.0 and m["cycle_seconds"] == 12.5
    assert tally.summary()["speculative_pair_hits"] == 3


def test_no_requests_gives_nan_not_an_error() -> None:
    m = Tally().metrics(1.0)
    assert tuple(m) == METRIC_KEYS and m["requests"] == 0 and math.isnan(m["hr_at_10"])
