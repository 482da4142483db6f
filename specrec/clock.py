"""The replay clock: cycles with `as_of` timestamps, and event views that cannot see past `as_of`.

Windows are half-open: cycle k covers [start + (k-1)*cadence, start + k*cadence), and an event is
"known at as_of" when its timestamp is strictly earlier than as_of. Nothing here reads the wall clock:
the replay feeds simulated cycles, a scheduler feeds real dates, a backfill feeds older ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from specrec.config import ClockConfig, parse_duration, parse_timestamp
from specrec.errors import SpecrecError


def to_utc(value: object, what: str = "as_of") -> pd.Timestamp:
    """An as_of (or other instant) as a UTC timestamp; naive values are taken to be UTC."""
    return parse_timestamp(what, value)


@dataclass(frozen=True)
class Cycle:
    """One replay cycle: events in [start, as_of) are its events; everything before as_of is known."""

    index: int  # 1-based
    start: pd.Timestamp
    as_of: pd.Timestamp

    @property
    def name(self) -> str:
        """The cycle's run name: its as_of date (ISO), so MLflow runs line up across experiments."""
        return (
            self.as_of.isoformat() if self.as_of != self.as_of.normalize() else self.as_of.date().isoformat()
        )


@dataclass(frozen=True)
class ReplayClock:
    """`n_cycles` cycles of length `cadence` from `start`."""

    start: pd.Timestamp
    cadence: pd.Timedelta
    n_cycles: int

    @classmethod
    def from_config(cls, cfg: ClockConfig) -> ReplayClock:
        """The clock described by params.yaml's `clock` section."""
        return cls(
            parse_timestamp("clock.start", cfg.start),
            parse_duration("clock.cadence", cfg.cadence),
            cfg.cycles,
        )

    @property
    def end(self) -> pd.Timestamp:
        """The as_of of the last cycle."""
        return self.start + self.n_cycles * self.cadence

    def cycle(self, index: int) -> Cycle:
        """Cycle `index` (1-based)."""
        if not 1 <= index <= self.n_cycles:
            raise SpecrecError(f"cycle {index} does not exist; the clock has cycles 1..{self.n_cycles}.")
        return Cycle(index, self.start + (index - 1) * self.cadence, self.start + index * self.cadence)

    def cycles(self) -> list[Cycle]:
        """All cycles in order."""
        return [self.cycle(i) for i in range(1, self.n_cycles + 1)]

    def cycle_ending_at(self, as_of: object) -> Cycle:
        """The cycle whose as_of is `as_of`."""
        ts = to_utc(as_of)
        k = (ts - self.start) / self.cadence
        if k != int(k) or not 1 <= k <= self.n_cycles:
            raise SpecrecError(
                f"as_of {ts.isoformat()} is not a cycle boundary of the clock "
                f"(start {self.start.isoformat()}, cadence {self.cadence}, {self.n_cycles} cycles)."
            )
        return self.cycle(int(k))

    def assign(self, timestamps: pd.Series) -> pd.Series:
        """The 1-based cycle of each timestamp; <NA> before the start or after the last cycle."""
        k = np.floor((timestamps - self.start) / self.cadence).astype("float64") + 1
        return pd.Series(k, index=timestamps.index).where((k >= 1) & (k <= self.n_cycles)).astype("Int64")


class EventLog:
    """Time-ordered events. A log cut at `horizon` holds no later event and refuses to be asked for one."""

    def __init__(self, events: pd.DataFrame, horizon: pd.Timestamp | None = None) -> None:
        ordered = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
        if horizon is not None:
            ordered = ordered.iloc[: int(ordered["timestamp"].searchsorted(horizon, side="left"))]
        self._events = ordered
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self._events)

    def _slice(self, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
        """Events in [start, end), refusing an `end` past the horizon."""
        if self.horizon is not None and end > self.horizon:
            raise SpecrecError(
                f"asked for events up to {end.isoformat()} from a log cut at as_of "
                f"{self.horizon.isoformat()}: code that runs at that as_of cannot see later events."
            )
        ts = self._events["timestamp"]
        lo = 0 if start is None else int(ts.searchsorted(start, side="left"))
        return self._events.iloc[lo : int(ts.searchsorted(end, side="left"))].copy()

    def as_of(self, as_of: object) -> EventLog:
        """The log as it was known at `as_of`: a new log that physically holds no later event."""
        ts = to_utc(as_of)
        if self.horizon is not None and ts > self.horizon:
            raise SpecrecError(
                f"cannot move a log cut at {self.horizon.isoformat()} forward to {ts.isoformat()}."
            )
        return EventLog(self._events, ts)

    def known_at(self, as_of: object) -> pd.DataFrame:
        """Every event strictly before `as_of`."""
        return self._slice(None, to_utc(as_of))

    def between(self, start: object, end: object) -> pd.DataFrame:
        """Events in [start, end)."""
        return self._slice(to_utc(start, "start"), to_utc(end, "end"))

    def of_cycle(self, cycle: Cycle) -> pd.DataFrame:
        """The events of the cycle ending at `cycle.as_of`."""
        return self._slice(cycle.start, cycle.as_of)
