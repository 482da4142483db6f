"""What the replay sends and how its answers are judged: windows of events, then per-cycle metrics.

Requests are the events of a span (the cadence after a cycle's as_of): whole speculation windows are
sampled with a seed until `replay.requests` events (the last window is cut), then sent in time order,
one POST /recommend per event (the event's user, `replay.k` items). An answer is judged against the
event's item on its first 10 items (HR@10, NDCG@10). Every cycle logs exactly METRIC_KEYS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

METRIC_KEYS = (
    "requests",
    "errors",
    "degraded",
    "hr_at_10",
    "ndcg_at_10",
    "spec_hits",
    "spec_coverage",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "cycle_seconds",
)
TOP = 10  # hr_at_10 / ndcg_at_10 judge the first 10 served items whatever replay.k asked for


@dataclass(frozen=True)
class Window:
    """A speculation window [start, start + length) and the events sent in it."""

    start: pd.Timestamp
    events: pd.DataFrame  # user_id, item_id, timestamp (UTC), time-ordered


def sample_windows(
    events: pd.DataFrame, length: pd.Timedelta, budget: int, seed: int
) -> list[Window]:
    """Whole windows of `events` drawn at random (seeded) until `budget` events; returned in time order."""
    if events.empty:
        return []
    ordered = events.sort_values("timestamp", kind="stable")
    starts = ordered["timestamp"].dt.floor(length)
    groups = {start: part for start, part in ordered.groupby(starts, sort=True)}
    keys = list(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    chosen, total = [], 0
    for k in order:
        if total >= budget:
            break
        part = groups[keys[k]].iloc[: budget - total]
        chosen.append(Window(keys[k], part))
        total += len(part)
    return sorted(chosen, key=lambda w: w.start)


@dataclass
class Tally:
    """Answers of one cycle, as they come."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    degraded: int = 0
    cold_start: int = 0
    hits: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    spec_requests: int = 0
    spec_pairs: int = 0

    def add(self, item_id: int, latency_ms: float, body: dict[str, Any] | None) -> None:
        """One answer (None when the request failed)."""
        self.latencies_ms.append(latency_ms)
        if body is None:
            self.errors += 1
            return
        self.degraded += int(bool(body["degraded"]) or bool(body["cold_start"]))
        self.cold_start += int(bool(body["cold_start"]))
        served = list(body["items"])[:TOP]
        rank = served.index(item_id) if item_id in served else -1
        self.hits.append(float(rank >= 0))
        self.gains.append(1.0 / math.log2(rank + 2) if rank >= 0 else 0.0)
        self.spec_requests += int(body["speculative_hits"] > 0)
        self.spec_pairs += int(body["speculative_hits"])

    def metrics(self, seconds: float) -> dict[str, float]:
        """Exactly METRIC_KEYS (NaN where nothing was answered)."""
        n = len(self.latencies_ms)
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99]) if n else (math.nan,) * 3
        out = {
            "requests": float(n),
            "errors": float(self.errors),
            "degraded": float(self.degraded),
            "hr_at_10": float(np.mean(self.hits)) if self.hits else math.nan,
            "ndcg_at_10": float(np.mean(self.gains)) if self.gains else math.nan,
            "spec_hits": float(self.spec_requests),
            "spec_coverage": self.spec_requests / n if n else math.nan,
            "latency_p50_ms": float(p50),
            "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99),
            "cycle_seconds": float(seconds),
        }
        assert tuple(out) == METRIC_KEYS
        return out

    def summary(self) -> dict[str, Any]:
        """The raw latency summary and counts behind the metrics (the run's JSON artifact)."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 95, 99)} if len(lat) else {}
        return {
            "latency_ms": {
                "n": int(len(lat)),
                "mean": float(lat.mean()) if len(lat) else None,
                "min": float(lat.min()) if len(lat) else None,
                "max": float(lat.max()) if len(lat) else None,
                **pct,
            },
            "latencies_ms_raw": [round(x, 3) for x in self.latencies_ms],  # in request order
            "errors": self.errors,
            "degraded_or_cold_start": self.degraded,
            "cold_start": self.cold_start,
            "requests_with_speculative_hit": self.spec_requests,
            "speculative_pair_hits": self.spec_pairs,
        }
