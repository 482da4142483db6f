"""The speculation ledger: what was precomputed, what requests found, and what it cost.

One live row per user, as in the Feast `speculative` view: a precompute for a user replaces the user's
row (its pairs can no longer be used), and a row is a miss once `expires_at` has passed. A request at
time t serves (user, c) for each of its candidates c; a candidate is a hit when the user's live row holds
it and t < expires_at, which is computed_at + ttl or the next serving-bundle switch, whichever comes first
(a row of another bundle is a miss). Definitions (issue 8):

- coverage  = hit served pairs / served pairs (every request's every candidate counts);
- precision = precomputed pairs served at least once before their row expired or was replaced
              / precomputed pairs;
- wasted    = precomputed pairs never served, and their CPU seconds (pairs x measured CPU s per pair);
- staleness = age (t - computed_at) of the row at each hit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class LiveRow:
    """A user's precomputed row: the window that computed it, its items and which were served."""

    window: int
    computed_at: int  # unix seconds (the window start)
    expires_at: int
    history: int  # events of the user the FM saw
    items: np.ndarray  # (n,) item indices
    used: np.ndarray  # (n,) bool
    payload: Any = None  # e.g. the pair representations, for quality evaluation
    serving: int = -1  # events of the user in the state whose retrieval chose `items` (-1: `history`)

    def __post_init__(self) -> None:
        if self.serving < 0:
            self.serving = self.history


@dataclass
class Ledger:
    """Precomputes and requests in time order; per-window tallies for the accounting."""

    ttl_s: int
    # serving-bundle switches (unix s, sorted): a row is a miss from the first switch after it was
    # computed on, as the serving path reads only rows of its own bundle
    switches: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rows: dict[int, LiveRow] = field(default_factory=dict)
    computed: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # window -> pairs
    used: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # window computed -> used
    users: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # window -> users written
    served: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # window -> served pairs
    hits: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # window -> hit pairs
    requests: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    cpu_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    ages: list[tuple[int, int]] = field(default_factory=list)  # (age s, hit pairs) per hit request

    def _close(self, row: LiveRow) -> None:
        """A row stops being usable: count its used pairs for the window that computed it."""
        self.used[row.window] += int(row.used.sum())

    def live(self, user: int, at: int) -> LiveRow | None:
        """The user's row if it is usable at `at`."""
        row = self.rows.get(user)
        return row if row is not None and row.expires_at > at else None

    def precompute(
        self,
        window: int,
        user: int,
        computed_at: int,
        history: int,
        items: np.ndarray,
        payload: Any = None,
        cpu_s: float = 0.0,
        serving: int = -1,
    ) -> None:
        """Write a user's row (replacing the previous one). `serving`: the events of the user state whose
        retrieval chose the items, when it is not `history` (an event-triggered row's fresh history with
        the nearline window state's candidates)."""
        old = self.rows.get(user)
        if old is not None:
            self._close(old)
        items = np.asarray(items, np.int64)
        expires = computed_at + self.ttl_s
        after = np.searchsorted(self.switches, computed_at, side="right")
        if after < len(self.switches):
            expires = min(expires, int(self.switches[after]))
        self.rows[user] = LiveRow(
            window,
            computed_at,
            expires,
            history,
            items,
            np.zeros(len(items), bool),
            payload,
            serving,
        )
        self.computed[window] += len(items)
        self.users[window] += 1
        self.cpu_s[window] += cpu_s

    def request(
        self, window: int, user: int, at: int, candidates: np.ndarray
    ) -> tuple[LiveRow | None, np.ndarray]:
        """Serve one request: the live row it read (or None) and the hit mask over its candidates."""
        self.requests[window] += 1
        self.served[window] += len(candidates)
        row = self.live(user, at)
        if row is None:
            return None, np.zeros(len(candidates), bool)
        hit = np.isin(candidates, row.items)
        row.used |= np.isin(row.items, candidates)
        n = int(hit.sum())
        self.hits[window] += n
        if n:
            self.ages.append((at - row.computed_at, n))
        return row, hit

    def finish(self) -> None:
        """Close every row (end of the replay: pairs not served by now count as unused)."""
        for row in self.rows.values():
            self._close(row)
        self.rows.clear()

    def per_window(self) -> pd.DataFrame:
        """One row per window with any activity: pairs computed/used, requests, served, hits."""
        windows = sorted(set(self.computed) | set(self.served))
        frame = pd.DataFrame(
            {
                "window": windows,
                "users": [self.users.get(w, 0) for w in windows],
                "pairs": [self.computed.get(w, 0) for w in windows],
                "used": [self.used.get(w, 0) for w in windows],
                "requests": [self.requests.get(w, 0) for w in windows],
                "served": [self.served.get(w, 0) for w in windows],
                "hits": [self.hits.get(w, 0) for w in windows],
                "cpu_s": [self.cpu_s.get(w, 0.0) for w in windows],
            }
        )
        frame["coverage"] = frame["hits"] / frame["served"].where(frame["served"] > 0)
        frame["precision"] = frame["used"] / frame["pairs"].where(frame["pairs"] > 0)
        return frame

    def summary(self, cpu_s_per_pair: float) -> dict[str, float]:
        """Totals: coverage, precision, wasted pairs and CPU seconds, staleness quantiles (seconds)."""
        pairs, used = sum(self.computed.values()), sum(self.used.values())
        served, hits = sum(self.served.values()), sum(self.hits.values())
        wasted = pairs - used
        out = {
            "coverage": hits / served if served else 0.0,
            "precision": used / pairs if pairs else 0.0,
            "pairs": float(pairs),
            "used_pairs": float(used),
            "wasted_pairs": float(wasted),
            "wasted_cpu_s": wasted * cpu_s_per_pair,
            "served_pairs": float(served),
            "hit_pairs": float(hits),
            "requests": float(sum(self.requests.values())),
            "windows_with_precompute": float(sum(1 for v in self.computed.values() if v)),
        }
        return out | staleness(self.ages)


def staleness(ages: list[tuple[int, int]]) -> dict[str, float]:
    """Quantiles of the age at use, weighted by hit pairs (seconds)."""
    if not ages:
        return {f"staleness_{k}_s": float("nan") for k in ("p50", "p90", "max", "mean")}
    age = np.asarray([a for a, _ in ages], np.float64)
    weight = np.asarray([n for _, n in ages], np.float64)
    order = np.argsort(age)
    age, cum = age[order], np.cumsum(weight[order]) / weight.sum()

    def q(p: float) -> float:
        return float(age[min(int(np.searchsorted(cum, p)), len(age) - 1)])

    return {
        "staleness_p50_s": q(0.5),
        "staleness_p90_s": q(0.9),
        "staleness_max_s": float(age[-1]),
        "staleness_mean_s": float((age * weight[order]).sum() / weight.sum()),
    }
