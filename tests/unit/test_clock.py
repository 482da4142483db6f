"""Replay clock: cycle boundaries, and no event at or after as_of is visible to code that runs at as_of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specrec.clock import EventLog, ReplayClock
from specrec.config import ClockConfig
from specrec.errors import SpecrecError


@pytest.fixture
def clock() -> ReplayClock:
    return ReplayClock.from_config(ClockConfig(start="2020-01-01", cadence="7D", cycles=5))


@pytest.fixture
def events() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    seconds = rng.integers(
        pd.Timestamp("2019-12-01").timestamp(), pd.Timestamp("2020-03-01").timestamp(), 5000
    )
    ts = pd.to_datetime(np.sort(seconds), unit="s", utc=True)
    frame = pd.DataFrame(
        {"user_id": rng.integers(0, 50, 5000), "item_id": rng.integers(0, 200, 5000), "timestamp": ts}
    )
    return frame.sample(frac=1.0, random_state=1)  # shuffled: the log must order it


def test_cycles_tile_the_replay(clock: ReplayClock) -> None:
    cycles = clock.cycles()
    assert [c.index for c in cycles] == [1, 2, 3, 4, 5]
    assert cycles[0].start == clock.start
    assert all(a.as_of == b.start for a, b in zip(cycles, cycles[1:], strict=False))
    assert cycles[-1].as_of == clock.end == pd.Timestamp("2020-02-05", tz="UTC")
    assert cycles[0].name == "2020-01-08"


def test_cycle_ending_at(clock: ReplayClock) -> None:
    assert clock.cycle_ending_at("2020-01-15").index == 2
    with pytest.raises(SpecrecError, match="not a cycle boundary"):
        clock.cycle_ending_at("2020-01-16")


def test_assign_matches_windows(clock: ReplayClock, events: pd.DataFrame) -> None:
    assigned = clock.assign(events["timestamp"])
    for c in clock.cycles():
        inside = (events["timestamp"] >= c.start) & (events["timestamp"] < c.as_of)
        assert (assigned[inside] == c.index).all()
    outside = (events["timestamp"] < clock.start) | (events["timestamp"] >= clock.end)
    assert assigned[outside].isna().all() and outside.any()


def test_nothing_after_as_of_leaks(clock: ReplayClock, events: pd.DataFrame) -> None:
    log = EventLog(events)
    for c in clock.cycles():
        known = log.known_at(c.as_of)
        assert (known["timestamp"] < c.as_of).all()
        assert len(known) == int((events["timestamp"] < c.as_of).sum())  # and nothing earlier is lost
        cut = log.as_of(c.as_of)
        assert len(cut) == len(known)
        assert cut.known_at(c.as_of)["timestamp"].max() < c.as_of
        with pytest.raises(SpecrecError, match="cannot see later events"):
            cut.known_at(c.as_of + pd.Timedelta(seconds=1))
        with pytest.raises(SpecrecError, match="cannot see later events"):
            cut.between(c.start, c.as_of + pd.Timedelta("1D"))
        with pytest.raises(SpecrecError):
            cut.as_of(c.as_of + pd.Timedelta("1D"))


def test_cycle_events_are_half_open(clock: ReplayClock) -> None:
    c = clock.cycle(2)
    ts = pd.to_datetime(
        [c.start - pd.Timedelta("1ns"), c.start, c.as_of - pd.Timedelta("1ns"), c.as_of], utc=True
    )
    log = EventLog(pd.DataFrame({"timestamp": ts, "item_id": [1, 2, 3, 4]}))
    assert log.of_cycle(c)["item_id"].tolist() == [2, 3]
    assert log.known_at(c.as_of)["item_id"].tolist() == [1, 2, 3]
