"""Synthetic interaction logs, catalogues and request traffic at any scale (load and scale benchmarks).

The model, drawn with NumPy in chunks of users so a million users fit in a few hundred MB:

- **Items.** Popularity weight `rank ** -zipf_exponent` over a random ranking (popular items can arrive
  late). A share `initial_items` of the catalogue is released in the year before `start`; the rest
  arrive uniformly over the log's span. Item ids run 1..items in release order. An event at time t only
  picks items released at or before t; a share `fresh_share` of events picks among items released in
  the last `fresh_days` (new items get traffic, as on a real platform).
- **Users.** Activity is Pareto (Lomax, tail index `activity_alpha`, mean 1): events per user are
  `1 + round((events_per_user - 1) * activity)`, capped at `max_events_per_user`. Each user is active
  between a uniform join day and an exponential lifetime later.
- **Sessions.** A user's events come in sessions (geometric, mean `session_events` events): gaps inside a
  session are lognormal (median `session_gap_s`); sessions start on random days of the user's active
  window at a time of day drawn from a daily cycle peaking at `peak_hour` UTC. The gap distribution is
  therefore bimodal: seconds to minutes inside a session, days between sessions.
- **Taste.** With `clusters` > 0, items belong to latent clusters and every user has a home cluster; a
  session draws `cluster_affinity` of its events within its cluster, and the cluster moves to a neighbour
  with probability `cluster_drift` from one session to the next. A sequential model therefore has signal
  to learn: the recent items predict the next cluster better than the whole history.

Output (`write`): `interactions.parquet` and `items.parquet` in the canonical schema
(`specrec.data.schema`, the dtypes `ingest` produces), written in row groups of one chunk each;
`catalogue.parquet` (the generator's truth per item: release time, popularity weight, cluster) and
`manifest.json`. `data_config` gives the `data:` settings that ingest the log through the `table` loader.
`traffic` draws request streams (user id, time) for load tests from the same users and session model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from specrec.config import DataConfig, TableConfig
from specrec.errors import SpecrecError

DAY_S = 86_400
_KEY = 1 << 40  # cluster key stride: larger than any time in seconds, so (cluster, time) is one sort key
_RATING_COLUMNS = {"rating": "rating", "weight": "weight"}


class SynthError(SpecrecError):
    """A synthetic-data parameter is out of range."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"synthetic data: {name} = {value!r} is not allowed; expected {allowed}.")


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic log; every value is checked on construction."""

    users: int = 10_000  # users in the log (ids 1..users)
    items: int = 1_000  # catalogue size (ids 1..items, in release order)
    events_per_user: float = 20.0  # mean events per user before the cap
    zipf_exponent: float = 1.0  # item popularity weight = rank ** -zipf_exponent
    activity_alpha: float = 1.5  # Pareto tail index of user activity (> 1; smaller = heavier tail)
    max_events_per_user: int = 5_000  # cap on one user's events
    session_events: float = 5.0  # mean events per session (geometric, >= 1)
    session_gap_s: float = 60.0  # median seconds between events of a session (lognormal)
    session_gap_sigma: float = 1.0  # lognormal sigma of in-session gaps
    start: str = "2024-01-01"  # first day of the log (UTC)
    days: int = 180  # span of the log
    peak_hour: float = 20.0  # session starts peak at this hour of day (UTC)
    diurnal_amplitude: float = 0.6  # 0 = flat day, up to 1 = no sessions at the trough
    initial_items: float = 0.5  # share of the catalogue released before `start`
    fresh_share: float = 0.1  # share of events that pick among items released in the last fresh_days
    fresh_days: float = 7.0
    clusters: int = 20  # latent taste clusters; 0 = none
    cluster_affinity: float = 0.7  # share of a session's events drawn from its cluster
    cluster_drift: float = 0.2  # probability the user's cluster moves to a neighbour between sessions
    ratings: bool = True  # ratings in [0.5, 5] (higher in the user's cluster); False: NaN like implicit data
    seed: int = 0
    chunk_users: int = 100_000  # users per chunk; part of the draw (same chunk_users, same output)

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("users", self.users >= 1, "an integer >= 1"),
            ("items", self.items >= 1, "an integer >= 1"),
            ("events_per_user", self.events_per_user >= 1, "a number >= 1"),
            ("zipf_exponent", 0 <= self.zipf_exponent <= 5, "a number in [0, 5]"),
            ("activity_alpha", 1 < self.activity_alpha <= 20, "a number in (1, 20]"),
            ("max_events_per_user", self.max_events_per_user >= 1, "an integer >= 1"),
            ("session_events", self.session_events >= 1, "a number >= 1"),
            ("session_gap_s", 0 < self.session_gap_s < DAY_S, "seconds in (0, 86400)"),
            ("session_gap_sigma", 0 <= self.session_gap_sigma <= 3, "a number in [0, 3]"),
            ("days", self.days >= 1, "an integer >= 1"),
            ("peak_hour", 0 <= self.peak_hour < 24, "an hour in [0, 24)"),
            ("diurnal_amplitude", 0 <= self.diurnal_amplitude <= 1, "a number in [0, 1]"),
            ("initial_items", 0 < self.initial_items <= 1, "a share in (0, 1] (some items must exist)"),
            ("fresh_share", 0 <= self.fresh_share <= 1, "a share in [0, 1]"),
            ("fresh_days", self.fresh_days > 0, "a number of days > 0"),
            ("clusters", 0 <= self.clusters <= self.items, f"an integer in [0, items={self.items}]"),
            ("cluster_affinity", 0 <= self.cluster_affinity <= 1, "a share in [0, 1]"),
            ("cluster_drift", 0 <= self.cluster_drift <= 1, "a probability in [0, 1]"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("chunk_users", self.chunk_users >= 1, "an integer >= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise SynthError(name, getattr(self, name), allowed)
        try:
            start = pd.Timestamp(self.start)
        except (ValueError, TypeError):
            raise SynthError("start", self.start, "a date such as 2024-01-01") from None
        if start.tzinfo is not None or not pd.Timestamp("1991-01-01") <= start <= pd.Timestamp("2029-01-01"):
            raise SynthError("start", self.start, "a date without time zone in 1991..2029 (ingest's range)")
        if start + pd.Timedelta(days=self.days + 1) > pd.Timestamp("2030-01-01"):
            raise SynthError("days", self.days, f"a span from start={self.start} ending before 2030")

    @property
    def t0(self) -> int:
        """The log's first second (unix, UTC)."""
        return int(pd.Timestamp(self.start, tz="UTC").timestamp())

    @property
    def t1(self) -> int:
        """The end of the log's span (unix seconds)."""
        return self.t0 + self.days * DAY_S


def with_settings(cfg: SynthConfig, settings: list[str]) -> SynthConfig:
    """`cfg` with NAME=VALUE settings applied (the CLI's --set), each converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise SynthError("--set", item, f"NAME=VALUE with NAME one of {sorted(fields)}")
        kind = type(getattr(cfg, name))
        try:
            changes[name] = text.strip().lower() in ("1", "true", "yes") if kind is bool else kind(text)
        except ValueError:
            raise SynthError(name, text, f"a value of type {kind.__name__}") from None
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Catalogue:
    """The items and the cumulative weights that sample them by release time (and cluster)."""

    released: np.ndarray  # (I,) int64 unix seconds, nondecreasing; item i has id i + 1
    weight: np.ndarray  # (I,) float64 popularity weight
    cluster: np.ndarray  # (I,) int64
    cum: np.ndarray  # (I,) cumulative weight in release order
    c_order: np.ndarray  # (I,) item positions sorted by (cluster, release)
    c_key: np.ndarray  # (I,) cluster * _KEY + released, in c_order
    c_cum: np.ndarray  # (I,) cumulative weight in c_order
    c_start: np.ndarray  # (C + 1,) first c_order position of each cluster

    def frame(self) -> pd.DataFrame:
        """The generator's truth per item: id, release time, popularity weight and rank, cluster."""
        rank = np.empty(len(self.weight), dtype=np.int64)
        rank[np.argsort(-self.weight, kind="stable")] = np.arange(1, len(self.weight) + 1)
        return pd.DataFrame(
            {
                "item_id": np.arange(1, len(self.released) + 1, dtype=np.int64),
                "released_at": pd.to_datetime(self.released, unit="s", utc=True),
                "popularity_weight": self.weight,
                "popularity_rank": rank,
                "cluster": self.cluster,
            }
        )


def catalogue(cfg: SynthConfig) -> Catalogue:
    """Draw the catalogue: release times, Zipf weights over a random ranking, clusters."""
    rng = np.random.default_rng([cfg.seed, 0])
    n0 = max(1, round(cfg.initial_items * cfg.items))
    before = cfg.t0 - rng.integers(0, 365 * DAY_S, n0)
    after = cfg.t0 + rng.integers(1, cfg.days * DAY_S, cfg.items - n0)
    released = np.sort(np.concatenate([before, after])).astype(np.int64)
    rank = rng.permutation(cfg.items) + 1
    weight = rank.astype(np.float64) ** -cfg.zipf_exponent
    cluster = rng.integers(0, max(cfg.clusters, 1), cfg.items).astype(np.int64)
    c_order = np.lexsort((released, cluster))
    c_start = np.searchsorted(cluster[c_order], np.arange(max(cfg.clusters, 1) + 1))
    return Catalogue(
        released,
        weight,
        cluster,
        np.cumsum(weight),
        c_order,
        cluster[c_order] * _KEY + released[c_order],
        np.cumsum(weight[c_order]),
        c_start,
    )


def _draw_in_range(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions in [lo, hi) drawn in proportion to the weights whose running sum is `cum` (hi > lo)."""
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    x = base + u * (cum[hi - 1] - base)
    return np.clip(np.searchsorted(cum, x, side="right"), lo, hi - 1)


def pick_items(
    cat: Catalogue, cfg: SynthConfig, t: np.ndarray, cluster: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Item positions (0-based) for events at unix seconds `t` in sessions of `cluster`: fresh, in-cluster
    or global draws, always among items already released."""
    n = len(t)
    released_n = np.searchsorted(cat.released, t, side="right")  # items [0, released_n) exist at t
    pos = np.full(n, -1, dtype=np.int64)
    kind = rng.random(n)
    fresh = kind < cfg.fresh_share
    if fresh.any():
        lo = np.searchsorted(cat.released, t[fresh] - int(cfg.fresh_days * DAY_S), side="left")
        hi, ok = released_n[fresh], released_n[fresh] > lo  # no fresh item yet: a global draw instead
        idx = np.flatnonzero(fresh)[ok]
        pos[idx] = _draw_in_range(cat.cum, lo[ok], hi[ok], rng.random(ok.sum()))
    in_cluster = ~fresh & (kind < cfg.fresh_share + (1 - cfg.fresh_share) * cfg.cluster_affinity)
    if cfg.clusters and in_cluster.any():
        c = cluster[in_cluster]
        lo = cat.c_start[c]
        hi = np.searchsorted(cat.c_key, c * _KEY + t[in_cluster], side="right")
        ok = hi > lo  # nothing of the cluster released yet: a global draw instead
        idx = np.flatnonzero(in_cluster)[ok]
        pos[idx] = cat.c_order[_draw_in_range(cat.c_cum, lo[ok], hi[ok], rng.random(ok.sum()))]
    rest = np.flatnonzero(pos < 0)
    zero = np.zeros(len(rest), np.int64)
    pos[rest] = _draw_in_range(cat.cum, zero, released_n[rest], rng.random(len(rest)))
    return pos


# ----------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class Users:
    """Per-user activity, event count, home cluster and active window (days from start)."""

    activity: np.ndarray  # (U,) float64, mean ~1, Pareto tail
    n_events: np.ndarray  # (U,) int64
    home: np.ndarray  # (U,) int64
    join_day: np.ndarray  # (U,) float64
    leave_day: np.ndarray  # (U,) float64


def users(cfg: SynthConfig, cat: Catalogue | None = None) -> Users:
    """Draw every user's activity, event count, home cluster and active window (8 bytes x 5 per user).
    Home clusters are drawn in proportion to the clusters' total popularity (popular genres have more
    fans), so in-cluster draws keep the items' overall popularity close to the Zipf weights."""
    cat = catalogue(cfg) if cat is None else cat
    rng = np.random.default_rng([cfg.seed, 1])
    activity = rng.pareto(cfg.activity_alpha, cfg.users) * (cfg.activity_alpha - 1)  # Lomax, mean 1
    n_events = np.clip(1 + np.rint((cfg.events_per_user - 1) * activity), 1, cfg.max_events_per_user)
    cluster_cum = np.cumsum(np.bincount(cat.cluster, weights=cat.weight, minlength=max(cfg.clusters, 1)))
    home = np.searchsorted(cluster_cum, rng.random(cfg.users) * cluster_cum[-1], side="right")
    join = rng.uniform(0, cfg.days, cfg.users)
    leave = np.minimum(cfg.days, join + 1 + rng.exponential(cfg.days, cfg.users))
    return Users(activity, n_events.astype(np.int64), home.astype(np.int64), join, leave)


def _time_of_day(cfg: SynthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds into the day, from density 1 + A cos(2 pi (h - peak) / 24), drawn by the inverse CDF."""
    minutes = np.arange(1440)
    density = 1 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (minutes / 60 - cfg.peak_hour) / 24)
    cdf = np.cumsum(density) / density.sum()
    minute = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), 1439)
    return minute * 60 + rng.integers(0, 60, n)


def _group_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sum of `values` restarting at every True of `first` (groups are contiguous)."""
    cs = np.cumsum(values)
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    return cs - (cs[starts] - values[starts])[group]


def _strictly_increasing(t: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Sorted times made strictly increasing within each user (contiguous): a tie moves a second later,
    so no two events of a user share a second (no exact duplicates can arise)."""
    g = np.arange(len(t), dtype=np.int64)
    shifted = t - g + (user - user.min()) * _KEY
    return np.maximum.accumulate(shifted) - (user - user.min()) * _KEY + g


# ---------------------------------------------------------------------------------------- events


def _sessions(cfg: SynthConfig, us: Users, lo: int, n: np.ndarray, rng: np.random.Generator) -> dict:
    """Session layout of a chunk: per event its user and session; per session user, start and cluster."""
    user = np.repeat(np.arange(lo, lo + len(n)), n)  # (E,) 0-based user index
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    new = first_of_user | (rng.random(len(user)) < 1 / cfg.session_events)
    session = np.cumsum(new) - 1  # (E,)
    s_user = user[new]  # (S,), nondecreasing
    span = us.leave_day[s_user] - us.join_day[s_user]
    day = np.floor(us.join_day[s_user] + rng.random(len(s_user)) * span)
    start = cfg.t0 + day.astype(np.int64) * DAY_S + _time_of_day(cfg, len(s_user), rng)
    start = start[np.lexsort((start, s_user))]  # a user's sessions in time order
    s_first = np.r_[True, s_user[1:] != s_user[:-1]]
    drift = cfg.cluster_drift
    step = rng.choice([-1, 0, 1], len(s_user), p=[drift / 2, 1 - drift, drift / 2])
    step[s_first] = 0
    s_cluster = (us.home[s_user] + _group_cumsum(step, s_first)) % max(cfg.clusters, 1)
    return {"user": user, "new": new, "session": session, "start": start, "cluster": s_cluster}


def events_chunk(cfg: SynthConfig, cat: Catalogue, us: Users, lo: int, hi: int) -> pd.DataFrame:
    """The events of users [lo, hi) (0-based) in the canonical interaction schema, per user in time order."""
    rng = np.random.default_rng([cfg.seed, 2, lo])
    s = _sessions(cfg, us, lo, us.n_events[lo:hi], rng)
    gaps = rng.lognormal(np.log(cfg.session_gap_s), cfg.session_gap_sigma, len(s["user"]))
    gaps[s["new"]] = 0.0
    offset = _group_cumsum(gaps, s["new"])
    t = s["start"][s["session"]] + offset.astype(np.int64)
    order = np.lexsort((t, s["user"]))  # overlapping sessions of a user interleave; users stay grouped
    t = _strictly_increasing(t[order], s["user"])
    cluster = s["cluster"][s["session"]][order]
    pos = pick_items(cat, cfg, t, cluster, rng)
    rating = np.full(len(t), np.nan)
    if cfg.ratings:
        match = cat.cluster[pos] == cluster
        raw = 3.0 + 1.0 * match + rng.normal(0, 0.8, len(t))
        rating = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
    return pd.DataFrame(
        {
            "user_id": s["user"].astype(np.int64) + 1,
            "item_id": pos.astype(np.int64) + 1,
            "timestamp": pd.DatetimeIndex(t.astype("datetime64[s]").astype("datetime64[ns]"), tz="UTC"),
            "rating": rating,
            "weight": np.full(len(t), np.nan),
        }
    )


def iter_events(cfg: SynthConfig, progress: bool = False) -> Iterator[pd.DataFrame]:
    """The log chunk by chunk (`chunk_users` users each), with a progress bar over users if asked."""
    from tqdm.auto import tqdm

    cat = catalogue(cfg)
    us = users(cfg, cat)
    with tqdm(total=cfg.users, unit="user", desc="synth", disable=not progress) as bar:
        for lo in range(0, cfg.users, cfg.chunk_users):
            hi = min(lo + cfg.chunk_users, cfg.users)
            yield events_chunk(cfg, cat, us, lo, hi)
            bar.update(hi - lo)


def item_table(cfg: SynthConfig, cat: Catalogue) -> pd.DataFrame:
    """The catalogue in the canonical item schema: a title, the latent cluster as genre, no tags."""
    ids = np.arange(1, cfg.items + 1)
    genres = pd.Series([f"cluster{c:03d}" for c in cat.cluster], dtype="string") if cfg.clusters else ""
    return pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": pd.Series([f"Synthetic item {i}" for i in ids], dtype="string"),
            "genres": pd.Series(genres, index=range(cfg.items), dtype="string"),
            "tags": pd.Series("", index=range(cfg.items), dtype="string"),
        }
    )


def write(cfg: SynthConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Write the log, items, catalogue truth and a manifest under `out`; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cat = catalogue(cfg)
    path = out / "interactions.parquet"
    tmp = path.with_name(f".{path.name}.tmp")
    rows, writer = 0, None
    try:
        for chunk in iter_events(cfg, progress):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    item_table(cfg, cat).to_parquet(out / "items.parquet", index=False)
    cat.frame().to_parquet(out / "catalogue.parquet", index=False)
    manifest = {
        "params": dataclasses.asdict(cfg),
        "rows": rows,
        "users": cfg.users,
        "items": cfg.items,
        "seconds": round(time.perf_counter() - t_start, 2),
        "bytes": {p.name: p.stat().st_size for p in sorted(out.glob("*.parquet"))},
        "data_config": dataclasses.asdict(data_config(out)),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def data_config(out: Path) -> DataConfig:
    """The `data:` settings that ingest a written log through the `table` loader (params.yaml `data`)."""
    return DataConfig(
        source="table",
        path=str(out / "interactions.parquet"),
        table=TableConfig(
            columns=dict(_RATING_COLUMNS),
            timestamp_unit="iso",  # the column is already datetime64[ns, UTC]; "iso" parses it as is
            items_path=str(out / "items.parquet"),
            item_columns={"title": "title", "genres": "genres", "tags": "tags"},
        ),
    )


# --------------------------------------------------------------------------------------- traffic


def traffic(
    cfg: SynthConfig,
    rate_rps: float,
    duration_s: float,
    start: pd.Timestamp | None = None,
    chunk_s: float = 60.0,
    burn_in_s: float = 3_600.0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Requests (user ids, unix seconds as float) in time order, chunk by chunk, for `duration_s` from
    `start` (default cfg.start): sessions start as a Poisson process whose rate follows the daily cycle
    (mean `rate_rps` / session_events per second), each by a user drawn in proportion to the log's
    activity (heavy-tailed), each a burst of session_events requests on average with lognormal gaps.
    Sessions of the `burn_in_s` before `start` are simulated too, so the stream starts in steady state."""
    if not rate_rps > 0 or not duration_s > 0:
        raise SynthError("rate_rps" if not rate_rps > 0 else "duration_s", rate_rps, "a number > 0")
    rng = np.random.default_rng([cfg.seed, 3])
    cum = np.cumsum(users(cfg).activity)
    t_begin = (pd.Timestamp(cfg.start, tz="UTC") if start is None else start).timestamp()
    session_rate = rate_rps / cfg.session_events
    pending_u, pending_t = np.empty(0, np.int64), np.empty(0)
    a = t_begin - burn_in_s
    while a < t_begin + duration_s:
        b = min(a + chunk_s, t_begin + duration_s)
        u, t = _traffic_sessions(cfg, cum, session_rate, a, b, rng)
        u, t = np.r_[pending_u, u], np.r_[pending_t, t]
        order = np.argsort(t, kind="stable")
        u, t = u[order], t[order]
        done = t < b
        pending_u, pending_t = u[~done], t[~done]
        keep = done & (t >= t_begin)
        if keep.any():
            yield u[keep], t[keep]
        a = b


def _traffic_sessions(
    cfg: SynthConfig, cum: np.ndarray, session_rate: float, a: float, b: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Requests of the sessions that start in [a, b): thinned Poisson starts, bursts of lognormal gaps."""
    peak = 1 + cfg.diurnal_amplitude
    n = rng.poisson(session_rate * peak * (b - a))
    start = np.sort(rng.uniform(a, b, n))
    hour = (start % DAY_S) / 3600
    keep = rng.random(n) * peak < 1 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (hour - cfg.peak_hour) / 24)
    start = start[keep]
    if len(start) == 0:
        return np.empty(0, np.int64), np.empty(0)
    user = np.searchsorted(cum, rng.random(len(start)) * cum[-1], side="right") + 1
    size = rng.geometric(1 / cfg.session_events, len(start))
    first = np.zeros(size.sum(), dtype=bool)
    first[np.r_[0, np.cumsum(size)[:-1]]] = True
    gaps = rng.lognormal(np.log(cfg.session_gap_s), cfg.session_gap_sigma, len(first))
    gaps[first] = 0.0
    t = np.repeat(start, size) + _group_cumsum(gaps, first)
    return np.repeat(user, size).astype(np.int64), t


def traffic_schedule(
    cfg: SynthConfig, rate_rps: float, duration_s: float, start: pd.Timestamp | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole traffic stream as (seconds from start, user ids): what an open-loop load client sends."""
    parts = list(traffic(cfg, rate_rps, duration_s, start))
    t0 = (pd.Timestamp(cfg.start, tz="UTC") if start is None else start).timestamp()
    if not parts:
        return np.empty(0), np.empty(0, np.int64)
    return np.concatenate([t for _, t in parts]) - t0, np.concatenate([u for u, _ in parts])
