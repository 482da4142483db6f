"""Replay semantics for speculation: requests, windows, the FM's states and retrieval, and the simulation.

- Every event (user u at time t) in the replayed span is a request. Its candidates are the top-N items
  (speculation.candidates) of an exact inner-product search (faiss IndexFlatIP) over the index's item
  embeddings, queried with the user's FM state, the user's known items excluded. With
  `request_state: window` (default) the state and the excluded items are those of the nearline
  `user_state` at the start of the request's window (what the serving path reads); with `event` they
  include every event before the request (a per-event streaming state, the strictest reading).
- Precompute runs at each window start s = start + k*W and uses only events before s. A user's row
  replaces the previous one and is a miss from s + ttl on (accounting.Ledger).
- A predicted user whose live row was computed from the same history is not recomputed: the row
  already holds those pairs.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import pandas as pd
import torch

from models.speculator import (
    ActivityModel,
    ActivityTimes,
    activity_features,
    candidate_windows,
    random_pairs,
    rank_curve,
    recent_users,
    select_pairs,
    train_activity,
)
from specrec.config import SpeculationConfig, parse_duration
from specrec.speculation.accounting import Ledger
from specrec.speculation.pairs import _left_pad, pair_batches, right_pad

if TYPE_CHECKING:
    from models.hstu import HSTU

log = logging.getLogger(__name__)

STRATEGIES = ("predictor", "recent", "random")
Key = tuple[int, int]  # (user_id, events of the user the state uses)


def seconds(spec: SpeculationConfig, key: str) -> int:
    """A duration of the speculation section in whole seconds."""
    return int(parse_duration(f"speculation.{key}", getattr(spec, key)).total_seconds())


@dataclass(frozen=True)
class Requests:
    """Replayed requests in time order."""

    window: np.ndarray  # (R,) window index
    user: np.ndarray  # (R,) user_id
    t: np.ndarray  # (R,) unix seconds
    item: np.ndarray  # (R,) item_idx of the event (the label)
    history: np.ndarray  # (R,) the user's events the request's state uses (0 = cold start)
    position: np.ndarray  # (R,) the user's events before this one (what a full FM online would see)

    def only(self, keep: np.ndarray) -> Requests:
        """The requests where the boolean mask `keep` is true, in the same order."""
        return Requests(*(getattr(self, f.name)[keep] for f in fields(self)))


class World:
    """Events up to `end`, per-user histories, the FM's states and ahead-of-time retrieval (cached)."""

    def __init__(
        self,
        fm: HSTU,
        events: pd.DataFrame,
        index_items: np.ndarray,
        spec: SpeculationConfig,
        end: pd.Timestamp,
        switches: Sequence[int] = (),
    ) -> None:
        self.fm, self.spec = fm, spec
        # when the serving bundle changes (unix s): rows written before a switch are other-bundle misses
        # after it (a replay over several cycles serves a new bundle each cycle)
        self.switches = np.sort(np.asarray(switches, np.int64))
        self.window_s, self.ttl_s = seconds(spec, "window"), seconds(spec, "ttl")
        self.horizon_s, self.gap_s = seconds(spec, "activity_horizon"), seconds(spec, "session_gap")
        known = events[events["timestamp"] < end].sort_values(
            ["user_id", "timestamp", "event_id"], kind="stable"
        )
        self.events = known
        secs = known["timestamp"].astype("int64").to_numpy() // 1_000_000_000
        self.times = ActivityTimes.build(known["user_id"].to_numpy(), secs, self.gap_s)
        self.hist: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        items = known["item_idx"].to_numpy(np.int64)
        for user, rows in known.groupby("user_id", sort=False).indices.items():
            self.hist[int(user)] = (items[rows], secs[rows])
        with torch.no_grad():
            self.table = fm.item_embeddings().numpy().astype(np.float32)  # (n_items+1, D)
        self.index_items = np.sort(np.asarray(index_items, np.int64))
        self.index = faiss.IndexFlatIP(self.table.shape[1])
        self.index.add(self.table[self.index_items])
        self._state: dict[Key, np.ndarray] = {}
        self._top: dict[Key, np.ndarray] = {}

    # ---- histories, states and retrieval ---------------------------------------------------------------

    def history(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        """The first n events (item_idx, unix s) of the user."""
        items, secs = self.hist.get(key[0], (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        return items[: key[1]], secs[: key[1]]

    def count_before(self, users: np.ndarray, at: np.ndarray | int) -> np.ndarray:
        """Events of each user_id strictly before `at`."""
        dense = self.times.dense(np.asarray(users, np.int64))
        at = np.broadcast_to(np.asarray(at, np.int64), dense.shape)
        out = np.zeros(len(dense), np.int64)
        ok = dense >= 0
        out[ok] = self.times.count_before(dense[ok], at[ok])
        return out

    @torch.no_grad()
    def ensure(self, keys: list[Key], batch: int = 128) -> None:
        """Compute (and cache) FM states and top-max_rank retrieval for keys with a history."""
        todo = sorted({k for k in keys if k[1] > 0 and k not in self._top})
        max_len = self.fm.config.max_len
        for lo in range(0, len(todo), batch):
            part = todo[lo : lo + batch]
            items, ts = _left_pad([self.history(k) for k in part], max_len)
            states = self.fm.user_state(items, ts).numpy().astype(np.float32)  # (B, D)
            seen = [np.unique(self.history(k)[0]) for k in part]
            depth = min(len(self.index_items), self.spec.max_rank + max(len(s) for s in seen))
            _, rows = self.index.search(states, depth)  # (B, depth) exact inner product
            for b, k in enumerate(part):
                got = self.index_items[rows[b][rows[b] >= 0]]
                self._state[k] = states[b]
                self._top[k] = got[~np.isin(got, seen[b])][: self.spec.max_rank]

    def top(self, key: Key) -> np.ndarray:
        """Retrieved item_idx by rank for the key (empty for a cold start)."""
        if key[1] == 0:
            return np.zeros(0, np.int64)
        if key not in self._top:
            self.ensure([key])
        return self._top[key]

    def state(self, key: Key) -> np.ndarray:
        """The FM user state of the key."""
        self.top(key)
        return self._state[key]

    # ---- requests and predictions ----------------------------------------------------------------------

    def n_windows(self, start_s: int, end_s: int) -> int:
        """Windows needed to cover [start_s, end_s)."""
        return max(0, -(-(end_s - start_s) // self.window_s))

    def requests(self, start_s: int, end_s: int) -> Requests:
        """The events in [start_s, end_s) as requests, in time order."""
        ev = self.events
        secs = ev["timestamp"].astype("int64").to_numpy() // 1_000_000_000
        position = ev.groupby("user_id", sort=False).cumcount().to_numpy()
        pick = (secs >= start_s) & (secs < end_s)
        order = np.argsort(secs[pick], kind="stable")
        users = ev["user_id"].to_numpy(np.int64)[pick][order]
        t = secs[pick][order]
        window = (t - start_s) // self.window_s
        if self.spec.request_state == "window":
            history = self.count_before(users, start_s + window * self.window_s)
        else:
            history = position[pick][order].astype(np.int64)
        items = ev["item_idx"].to_numpy(np.int64)[pick][order]
        return Requests(window, users, t, items, history, position[pick][order].astype(np.int64))

    def examples(self, start_s: int, n_windows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidate (dense user, window) pairs of the span, their features and whether the user made a
        request before a row written at the window start would expire (in [s, s + ttl)): the event that
        makes a precomputed row useful."""
        dense, k = candidate_windows(self.times, start_s, n_windows, self.window_s, self.horizon_s)
        at = start_s + k * self.window_s
        x = activity_features(self.times, dense, at, self.window_s)
        active = self.times.count_between(dense, at, at + self.ttl_s) > 0
        return dense, k, x, active.astype(np.float32)


# ---- the predictor -------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """The trained activity model and the rank curve: everything the speculator ranks pairs with."""

    model: ActivityModel
    curve: np.ndarray  # (max_rank,) P(served | retrieval rank at the window start)
    info: dict[str, float] = field(default_factory=dict)


def fit(world: World, train_start_s: int, train_end_s: int, curve_examples: int = 300) -> Predictor:
    """Train the activity model on the windows of [train_start_s, train_end_s) and measure the rank curve."""
    spec = world.spec
    n_windows = (train_end_s - train_start_s - world.ttl_s) // world.window_s  # labels end by train_end
    dense, k, x, y = world.examples(train_start_s, n_windows)
    torch.manual_seed(spec.seed)
    model = ActivityModel(x.shape[1], spec.hidden)
    losses = train_activity(model, x, y, spec.epochs, spec.lr, spec.seed)
    rng = np.random.default_rng(spec.seed)
    positives = np.flatnonzero(y > 0)
    sample = rng.choice(positives, size=min(curve_examples, len(positives)), replace=False)
    served = []
    for i in sample:
        s = train_start_s + int(k[i]) * world.window_s
        served.append(_served_ranks(world, int(world.times.users[dense[i]]), s))
    curve = rank_curve(served, spec.max_rank, len(sample))
    info = {
        "train_examples": float(len(y)),
        "train_active_share": float(y.mean()),
        "train_loss": losses[-1],
        "curve_examples": float(len(sample)),
    }
    return Predictor(model, curve, info)


def _served_ranks(world: World, user: int, s: int) -> np.ndarray:
    """Ranks (in the retrieval at s) of the candidates the user's requests in [s, s+W) were served."""
    reqs = world.requests(s, s + world.window_s)
    mine = reqs.user == user
    key = (user, int(world.count_before(np.array([user]), s)[0]))
    ahead = world.top(key)
    served = [world.top((user, int(n)))[: world.spec.candidates] for n in np.unique(reqs.history[mine])]
    if not served or len(ahead) == 0:
        return np.zeros(0, np.int64)
    union = np.unique(np.concatenate(served))
    return np.flatnonzero(np.isin(ahead, union))


@dataclass
class Plan:
    """Predicted P(active) of candidate users, grouped by window."""

    by_window: dict[int, tuple[np.ndarray, np.ndarray]]  # window -> (user_ids, p)


def plan(world: World, predictor: Predictor, start_s: int, n_windows: int) -> Plan:
    """P(active) for every candidate (user, window) of the span, keeping users at or above min_p."""
    dense, k, x, _ = world.examples(start_s, n_windows)
    p = predictor.model.predict(x) if len(x) else np.zeros(0)
    keep = p >= world.spec.min_p_active
    users, k, p = world.times.users[dense[keep]], k[keep], p[keep]
    order = np.argsort(k, kind="stable")
    users, k, p = users[order], k[order], p[order]
    if len(k) == 0:
        return Plan({})
    bounds = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[bounds[1:], len(k)]
    return Plan({int(k[a]): (users[a:b], p[a:b]) for a, b in zip(bounds, ends, strict=True)})


# ---- the simulation ------------------------------------------------------------------------------------


@dataclass
class Served:
    """What one request met: its candidates, the live row it read and the hits."""

    request: int
    candidates: np.ndarray
    row_items: np.ndarray | None
    row_vectors: np.ndarray | None
    hit: np.ndarray
    row_history: int = -1  # events of the user the row's FM saw (-1: no row)
    row_job: int = -1  # the simulation's job that wrote the row (its vectors are computed after the pass)


@dataclass
class Outcome:
    """One simulated strategy at one budget."""

    strategy: str
    budget: int
    ledger: Ledger
    spend: dict[int, int]  # window -> pairs precomputed
    served: list[Served]
    cpu_s: float  # measured CPU seconds of the FM pair work (0 when not computed)
    pairs_computed: int
    cold_requests: int


def _fresh(ledger: Ledger, users: np.ndarray, hist: np.ndarray, s: int) -> np.ndarray:
    """Users whose live row at s already holds what a window-start precompute would compute: the pairs of
    the same history for the candidates of the same state."""
    return np.array(
        [
            (r := ledger.live(int(u), s)) is not None and r.history == h and r.serving == h
            for u, h in zip(users, hist, strict=True)
        ],
        bool,
    )


def _selection(
    world: World,
    strategy: str,
    k: int,
    s: int,
    budget: int,
    ctx: dict[str, Any],
    ledger: Ledger,
) -> dict[int, tuple[int, np.ndarray]]:
    """user_id -> (history, item_idx to precompute) for window k."""
    spec = world.spec
    if strategy == "predictor":
        users, p = ctx["plan"].by_window.get(k, (np.zeros(0, np.int64), np.zeros(0)))
        hist = world.count_before(users, s)
        fresh = _fresh(ledger, users, hist, s)
        users, p, hist = users[~fresh], p[~fresh], hist[~fresh]
        pos, rank = select_pairs(p * (hist > 0), ctx["curve"], budget, spec.min_p_active)
    elif strategy == "recent":
        users, counts = ctx["last_window"].get(k - 1, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        hist = world.count_before(users, s)
        fresh = _fresh(ledger, users, hist, s)  # (an event-triggered row may already hold the window's)
        users, counts, hist = users[~fresh], counts[~fresh], hist[~fresh]
        pos, rank = recent_users(counts * (hist > 0), spec.candidates, budget)
    else:
        n = ctx["spend"].get(k, 0)
        firsts = ctx["first_event"]
        users = ctx["all_users"][firsts < s]
        hist = world.count_before(users, s)
        pos, col = random_pairs(len(users), len(world.index_items), n, ctx["rng"])
        out: dict[int, tuple[int, np.ndarray]] = {}
        for u in np.unique(pos):
            out[int(users[u])] = (int(hist[u]), np.unique(world.index_items[col[pos == u]]))
        return out
    out = {}
    for u in np.unique(pos):
        top = world.top((int(users[u]), int(hist[u])))
        ranks = rank[pos == u]
        out[int(users[u])] = (int(hist[u]), np.unique(top[ranks[ranks < len(top)]]))
    return {u: v for u, v in out.items() if len(v[1])}


@dataclass
class _Job:
    """One precompute: a user's history and the items whose pair vectors it computes."""

    window: int  # the window whose budget paid for it
    user: int
    history: int
    items: np.ndarray
    ready_at: int  # when the row lands in the online store (unix s)
    serving: int = -1  # the state whose retrieval chose the items, when not `history`


def _event_triggers(world: World, reqs: Requests, strategy: str, ctx: dict[str, Any]) -> np.ndarray:
    """Which requests' events trigger a precompute (`trigger: event`): the last event of its user in its
    second (the nearline consumer reads per-second micro-batches), with the predictor's P(active within
    the ttl) after it at least min_p_active (the heuristic triggers on every event)."""
    n = len(reqs.t)
    last = np.ones(n, bool)
    if n:
        order = np.lexsort((np.arange(n), reqs.t, reqs.user))  # by user, time, then replay order
        same = (reqs.user[order][1:] == reqs.user[order][:-1]) & (reqs.t[order][1:] == reqs.t[order][:-1])
        last[order[:-1][same]] = False
    if strategy == "predictor":
        return last & (ctx["event_p"] >= world.spec.min_p_active)
    return last


def simulate(
    world: World,
    reqs: Requests,
    start_s: int,
    strategy: str,
    budget: int,
    ctx: dict[str, Any],
    vectors: bool = False,
) -> Outcome:
    """Run precompute windows and requests in time order for one strategy at one budget.

    Every precompute is a job (user, history, items) that lands at `ready_at`: the window start for the
    window-start selection; with `trigger: event` also event_delay after each triggering event, with the
    history through that event and the items the serving path retrieves for the user then, as long as the
    window's budget lasts. With `vectors` the FM pair vectors of every job are computed afterwards in
    batches (what a job computes depends only on its history and items) and handed to the served
    requests' records."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    spec, ledger = world.spec, Ledger(world.ttl_s, switches=world.switches)
    event_mode = spec.trigger == "event" and strategy != "random"
    delay = seconds(spec, "event_delay")
    triggers = _event_triggers(world, reqs, strategy, ctx) if event_mode else np.zeros(len(reqs.t), bool)
    serving = trigger_serving(world, reqs, start_s) if event_mode else reqs.history
    by_window: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(reqs.window):
        by_window[int(w)].append(i)
    windows = set(by_window)
    if strategy == "predictor":
        windows |= set(ctx["plan"].by_window)
    elif strategy == "recent":
        windows |= {w + 1 for w in by_window}
    else:
        windows |= set(ctx["spend"])
    spend: dict[int, int] = defaultdict(int)
    served: list[Served] = []
    jobs: list[_Job] = []
    pending: deque[_Job] = deque()  # event-triggered jobs not landed yet, in ready_at order (constant delay)
    cold = 0

    def write(job: _Job) -> None:
        ledger.precompute(
            job.window, job.user, job.ready_at, job.history, job.items, len(jobs), serving=job.serving
        )
        jobs.append(job)

    def land(until: int) -> None:
        while pending and pending[0].ready_at <= until:
            write(pending.popleft())

    for k in sorted(windows):
        s = start_s + k * world.window_s
        land(s)
        chosen = _selection(world, strategy, k, s, budget, ctx, ledger)
        for u, (hist, items) in chosen.items():
            write(_Job(k, u, hist, items, s))
            spend[k] += len(items)
        for i in by_window.get(k, []):
            t = int(reqs.t[i])
            land(t)
            key = (int(reqs.user[i]), int(reqs.history[i]))
            cand = world.top(key)[: spec.candidates]
            if len(cand) == 0:
                cold += 1
            else:
                row, hit = ledger.request(k, key[0], t, cand)
                if ctx.get("record"):
                    got = None if row is None else row.items
                    wrote, seen = (-1, -1) if row is None else (int(row.payload), row.history)
                    served.append(Served(i, cand, got, None, hit, seen, wrote))
            if triggers[i]:
                job = _triggered(world, reqs, i, k, int(serving[i]), delay)
                if job is not None and spend[k] + len(job.items) <= budget:
                    pending.append(job)
                    spend[k] += len(job.items)
    land(np.iinfo(np.int64).max)
    cpu = 0.0
    if vectors and jobs:
        result = pair_batches(
            world.fm.pair_repr,
            [world.history((j.user, j.history)) for j in jobs],
            [j.items for j in jobs],
            world.fm.config.max_len,
            spec.batch_users,
            spec.batch_retries,
        )
        cpu = result.cpu_s
        per_pair = cpu / max(sum(len(j.items) for j in jobs), 1)
        for j in jobs:
            ledger.cpu_s[j.window] += per_pair * len(j.items)
        for r in served:
            if r.row_job >= 0:
                r.row_vectors = result.vectors[r.row_job]
    ledger.finish()
    spend = {w: n for w, n in spend.items() if n}
    return Outcome(strategy, budget, ledger, spend, served, cpu, sum(spend.values()), cold)


def serving_history(
    world: World, users: np.ndarray, at: np.ndarray, ready: np.ndarray, anchor_s: int
) -> np.ndarray:
    """Events of the user state whose retrieval an event-triggered precompute knowing everything before
    `at` takes its items from: the per-event state with `request_state: event`; else the nearline state
    of the window (windows from `anchor_s`) the row lands in at `ready`, as far as the job can know it (a
    later window's state may hold events after `at`, which the job cannot see)."""
    users, at, ready = np.asarray(users, np.int64), np.asarray(at, np.int64), np.asarray(ready, np.int64)
    if world.spec.request_state == "event":
        return world.count_before(users, at)
    w_start = anchor_s + ((ready - anchor_s) // world.window_s) * world.window_s
    return world.count_before(users, np.minimum(w_start, at))


def trigger_serving(world: World, reqs: Requests, start_s: int) -> np.ndarray:
    """(R,) `serving_history` of each request's event-triggered precompute: it knows the event's whole
    second (per-second micro-batches) and lands event_delay after the event."""
    ready = reqs.t + seconds(world.spec, "event_delay")
    return serving_history(world, reqs.user, reqs.t + 1, ready, start_s)


def _triggered(world: World, reqs: Requests, i: int, k: int, serving: int, delay: int) -> _Job | None:
    """The precompute request i's event triggers: the user's history through the event and the top
    candidates of the `serving` state; None when that state is a cold start."""
    user = int(reqs.user[i])
    items = np.unique(world.top((user, serving))[: world.spec.candidates])
    if len(items) == 0:
        return None
    return _Job(k, user, int(reqs.position[i]) + 1, items, int(reqs.t[i]) + delay, serving)


def context(
    world: World, reqs: Requests, predictor: Predictor | None, span_plan: Plan | None, seed: int
) -> dict[str, Any]:
    """What the strategies select from: the plan, the rank curve, last-window activity, the user list."""
    last: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    frame = pd.DataFrame({"w": reqs.window, "u": reqs.user})
    for w, grp in frame.groupby("w"):
        counts = grp["u"].value_counts()
        last[int(w)] = (counts.index.to_numpy(np.int64), counts.to_numpy(np.int64))
    users = world.times.users
    first = world.times.seconds[world.times.start[:-1]] if len(users) else np.zeros(0, np.int64)
    event_p = np.zeros(len(reqs.t))
    if world.spec.trigger == "event" and predictor is not None and len(reqs.t):
        # P(active within the ttl) right after each request's event (its features include the event)
        x = activity_features(world.times, world.times.dense(reqs.user), reqs.t + 1, world.window_s)
        event_p = predictor.model.predict(x)
    return {
        "event_p": event_p,
        "plan": span_plan,
        "curve": None if predictor is None else predictor.curve,
        "last_window": last,
        "all_users": users,
        "first_event": first,
        "rng": np.random.default_rng(seed),
        "spend": {},
    }


def prefetch(world: World, reqs: Requests, span_plan: Plan, start_s: int) -> None:
    """Compute states and retrieval for every key the simulations will ask for, in big batches."""
    keys = [(int(u), int(n)) for u, n in zip(reqs.user, reqs.history, strict=True)]
    for k, (users, _) in span_plan.by_window.items():
        s = start_s + k * world.window_s
        keys += [(int(u), int(n)) for u, n in zip(users, world.count_before(users, s), strict=True)]
    for w in np.unique(reqs.window):
        s = start_s + (int(w) + 1) * world.window_s
        users = np.unique(reqs.user[reqs.window == w])
        keys += [(int(u), int(n)) for u, n in zip(users, world.count_before(users, s), strict=True)]
    if world.spec.trigger == "event":
        serving = trigger_serving(world, reqs, start_s)
        keys += [(int(u), int(n)) for u, n in zip(reqs.user, serving, strict=True)]
    started = time.perf_counter()
    world.ensure(keys)
    log.info("states and retrieval for %d keys in %.1f s", len(set(keys)), time.perf_counter() - started)


# ---- quality -------------------------------------------------------------------------------------------


@torch.no_grad()
def quality(
    world: World,
    reqs: Requests,
    outcome: Outcome,
    scorer: Any,
    stats: Any,
    batch: int = 256,
) -> dict[str, float]:
    """NDCG@10 / HR@10 over the served requests: the thin scorer with FM pair vectors on hits, the same
    scorer without them, and the full FM's pair scores on every candidate (the upper bound).

    `stats(t)` gives the (n_items+1, F) item-statistics table the scorer saw at time t. `full_fm` is the
    FM run online at the request: every event before it in the history (the upper bound of the issue);
    `full_fm_window` scores with the history of the request's state (what a 100%-coverage speculation
    at the window start would give, and what the full FM would see with the scorer's information).
    `all_pairs` is the thin scorer with the FM's pair vector on every candidate, computed at the request
    (the FM's pair representation run online for all of them, then the served interaction step);
    `all_pairs_window` the same with the window start's history: what 100% coverage would give, so
    `quality_recovered_of_all_pairs_window` is the share of its own attainable gain speculation delivers.
    Per-request paired differences with bootstrap intervals come with the means (`paired_gains`).
    """
    from models.evaluate import metrics_from_ranks

    served = outcome.served
    keys = [(int(reqs.user[r.request]), int(reqs.history[r.request])) for r in served]
    fresh = [(int(reqs.user[r.request]), int(reqs.position[r.request])) for r in served]
    pair_fresh, teacher = _full_fm(world, fresh, [r.candidates for r in served])
    pair_window, teacher_window = _full_fm(world, keys, [r.candidates for r in served])
    ranks: dict[str, list[torch.Tensor]] = {k: [] for k in VARIANTS}
    for lo in range(0, len(served), batch):
        part = served[lo : lo + batch]
        # a request may have fewer than N candidates (a small catalogue minus seen items): right-pad with
        # the padding item 0, whose columns rank below every real candidate
        cand = right_pad([r.candidates for r in part], 0)  # (B, N)
        pad = torch.from_numpy(cand == 0)
        u = torch.from_numpy(np.stack([world.state(k) for k in keys[lo : lo + batch]]))  # (B, D)
        e = torch.from_numpy(world.table[cand])  # (B, N, D)
        s = torch.from_numpy(
            np.stack([stats(int(reqs.t[r.request]))[c] for r, c in zip(part, cand, strict=True)])
        )
        p, hit = np.zeros(e.shape, np.float32), np.zeros(cand.shape, np.float32)
        current = np.zeros(cand.shape, np.float32)  # hits whose row saw every event before the request
        for b, r in enumerate(part):
            if r.row_vectors is not None and r.row_items is not None and r.hit.any():
                cols = np.flatnonzero(r.hit)
                p[b, cols] = np.asarray(r.row_vectors)[np.searchsorted(r.row_items, r.candidates[cols])]
                hit[b, cols] = 1.0
                if r.row_history == reqs.position[r.request]:
                    current[b, cols] = 1.0
        label = np.array([reqs.item[r.request] for r in part])
        found = cand == label[:, None]
        col = torch.from_numpy(np.where(found.any(1), found.argmax(1), -1))
        every = torch.from_numpy((cand != 0).astype(np.float32))
        scores = {
            "with": scorer(u, e, torch.from_numpy(p), torch.from_numpy(hit), s),
            "with_current": scorer(u, e, torch.from_numpy(p), torch.from_numpy(current), s),
            "without": scorer(u, e, torch.from_numpy(p), torch.zeros(hit.shape), s),
            "full_fm": torch.from_numpy(right_pad(teacher[lo : lo + batch], 0.0)),
            "full_fm_window": torch.from_numpy(right_pad(teacher_window[lo : lo + batch], 0.0)),
            "all_pairs": scorer(
                u, e, torch.from_numpy(right_pad(pair_fresh[lo : lo + batch], 0.0)), every, s
            ),
            "all_pairs_window": scorer(
                u, e, torch.from_numpy(right_pad(pair_window[lo : lo + batch], 0.0)), every, s
            ),
        }
        scores = {name: sc.masked_fill(pad, -torch.inf) for name, sc in scores.items()}
        for name, sc in scores.items():
            own = sc.gather(1, col.clamp(min=0).unsqueeze(1))
            ranks[name].append(torch.where(col >= 0, (sc > own).sum(1), torch.full_like(col, 10**9)))
    out: dict[str, float] = {}
    for name, parts in ranks.items():
        m = metrics_from_ranks(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long), (10,))
        out |= {f"ndcg@10_{name}": float(m["ndcg@10"]), f"hr@10_{name}": float(m["hr@10"])}
    out["quality_requests"] = float(len(served))
    # how fresh the hits were in events, not seconds: the share of hit pairs whose row's FM saw every event
    # before the request (what the full FM at the request sees), and the mean events the rows missed
    hit_pairs = np.array([int(r.hit.sum()) for r in served], np.float64)
    behind = np.array([int(reqs.position[r.request]) - r.row_history for r in served], np.float64)
    total = hit_pairs.sum()
    out["hits_with_request_history"] = float(hit_pairs[behind == 0].sum() / total) if total else float("nan")
    out["hit_events_behind_mean"] = float((hit_pairs * behind).sum() / total) if total else float("nan")
    for key, (num, upper) in RATIOS.items():
        out[key] = _recovered(out, num, upper)
    gains = {k: _ndcg10(torch.cat(v)) if v else np.zeros(0) for k, v in ranks.items()}
    lag = np.array([int(reqs.position[r.request] - reqs.history[r.request]) for r in served], np.int64)
    out |= paired_gains(gains, lag == 0, seed=world.spec.seed)
    out |= gap_by_row(gains, served, reqs)
    return out


ROW_CLASSES = ("current", "behind", "partial", "miss")


def gap_by_row(ndcg: dict[str, np.ndarray], served: list[Served], reqs: Requests) -> dict[str, float]:
    """Where the full FM's lead over the scorer with pairs comes from, by what each request's row was:
    `current` every candidate a hit on a row that saw every event before the request, `behind` every
    candidate a hit on an older row, `partial` some candidates hits, `miss` none. Per class: its share of
    requests and its contribution to the mean NDCG@10 of full FM - with and of with - without (the
    contributions sum to the overall means)."""
    n = len(served)
    cls = np.array(
        [
            "miss"
            if not r.hit.any()
            else "partial"
            if not r.hit.all()
            else "current"
            if r.row_history == reqs.position[r.request]
            else "behind"
            for r in served
        ]
    )
    out: dict[str, float] = {}
    for name in ROW_CLASSES:
        mask = cls == name
        out[f"requests_{name}_row"] = float(mask.mean()) if n else float("nan")
        for a, b in (("full_fm", "with"), ("with", "without")):
            diff = ndcg[a] - ndcg[b]
            out[f"ndcg@10_{a}_minus_{b}_from_{name}_row"] = float(diff[mask].sum() / n) if n else float("nan")
    return out


def _recovered(out: dict[str, float], num: str, upper: str) -> float:
    """(num - without) / (upper - without); NaN when the upper bound gains nothing over "without"."""
    gain = out[f"ndcg@10_{upper}"] - out["ndcg@10_without"]
    return (out[f"ndcg@10_{num}"] - out["ndcg@10_without"]) / gain if gain > 0 else float("nan")


def _ndcg10(ranks: torch.Tensor) -> np.ndarray:
    """Per-request NDCG@10 (R,) from 0-based ranks."""
    r = ranks.double().numpy()
    return np.where(r < 10, 1.0 / np.log2(r + 2), 0.0)


VARIANTS = ("with", "with_current", "without", "full_fm", "full_fm_window", "all_pairs", "all_pairs_window")
# (num - without) / (upper - without) for each upper reference: the (the full FM at the request),
# the full FM with the window start's history (equal information), the scorer with pair vectors on every
# candidate at the request and at the window start (what 100% coverage would give); and the ratio
# when only rows that saw every event before the request are used (an older row counts as a miss)
RATIOS = {
    "quality_recovered": ("with", "full_fm"),
    "quality_recovered_window_start": ("with", "full_fm_window"),
    "quality_recovered_of_all_pairs": ("with", "all_pairs"),
    "quality_recovered_of_all_pairs_window": ("with", "all_pairs_window"),
    "quality_recovered_current_rows": ("with_current", "full_fm"),
}
PAIRED = (
    ("with", "without"),
    ("with_current", "without"),
    ("full_fm", "with_current"),
    ("full_fm", "without"),
    ("full_fm_window", "without"),
    ("full_fm", "with"),
    ("all_pairs", "without"),
    ("all_pairs_window", "without"),
    ("all_pairs_window", "with"),
)


def paired_gains(
    ndcg: dict[str, np.ndarray], first: np.ndarray, seed: int = 0, resamples: int = 2000
) -> dict[str, float]:
    """Per-request paired differences of NDCG@10 (each variant against "without", and the full FM against
    "with"), with 95% bootstrap intervals over requests, and the same resamples' intervals of the quality
    ratios (NaN when more than 1% of resamples have no positive denominator); and each variant on the
    requests that are the first of their user's window (`first`: the window start's history is the
    request's own, so there the full FM and the precomputed pairs see the same events)."""
    rng = np.random.default_rng(seed)
    n = len(ndcg["without"])
    idx = rng.integers(0, n, (resamples, n)) if n else np.zeros((0, 0), np.int64)
    out: dict[str, float] = {}
    for a, b in PAIRED:
        diff = ndcg[a] - ndcg[b]
        boot = diff[idx].mean(1) if n else np.full(1, np.nan)
        out[f"ndcg@10_{a}_minus_{b}"] = float(diff.mean()) if n else float("nan")
        out[f"ndcg@10_{a}_minus_{b}_ci_low"] = float(np.percentile(boot, 2.5))
        out[f"ndcg@10_{a}_minus_{b}_ci_high"] = float(np.percentile(boot, 97.5))
    for key, (num, upper) in RATIOS.items():
        gain = (ndcg[num] - ndcg["without"])[idx].mean(1) if n else np.full(1, np.nan)
        # the ratio per resample; an interval only when (nearly) every resample has a positive denominator
        den = (ndcg[upper] - ndcg["without"])[idx].mean(1) if n else np.full(1, np.nan)
        ratio = np.where(den > 0, gain / np.where(den > 0, den, 1.0), np.nan)
        defined = np.isfinite(ratio)
        ok = defined.mean() >= 0.99
        out[f"{key}_ci_low"] = float(np.percentile(ratio[defined], 2.5)) if ok else float("nan")
        out[f"{key}_ci_high"] = float(np.percentile(ratio[defined], 97.5)) if ok else float("nan")
    out["requests_first_in_window"] = float(first.sum())
    for name, values in ndcg.items():
        out[f"ndcg@10_{name}_first_in_window"] = float(values[first].mean()) if first.any() else float("nan")
    return out


def _full_fm(
    world: World, keys: list[Key], cands: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FM pair vectors and scores of each request's candidates (once per distinct (key, candidates))."""
    distinct: dict[tuple[Key, bytes], int] = {}
    for k, c in zip(keys, cands, strict=True):
        distinct.setdefault((k, c.tobytes()), len(distinct))
    order = list(distinct)
    cand_of = {
        kc: c
        for kc, c in zip(((k, c.tobytes()) for k, c in zip(keys, cands, strict=True)), cands, strict=True)
    }
    result = pair_batches(
        world.fm.pair_repr,
        [world.history(k) for k, _ in order],
        [cand_of[kc] for kc in order],
        world.fm.config.max_len,
        world.spec.batch_users,
        world.spec.batch_retries,
    )
    at = [distinct[(k, c.tobytes())] for k, c in zip(keys, cands, strict=True)]
    return [result.vectors[i] for i in at], [result.scores[i] for i in at]
