"""One speculative precompute window: predict, run the FM pair representation in batches, write Feast rows.

At the window start `as_of` (only events before it are read): score the candidate users with the
`specrec-speculator@champion` predictor, skip users whose live row was computed from the same history,
fill the budget (max FM pair evaluations per window) greedily by P(served), run the serving bundle's FM
pair representation in batches (a failing batch is retried; if it keeps failing nothing is written), and
write one `speculative` row per (user, bundle): item_ids, pair_repr (row-major n x D), pair_score and
expires_at = as_of + ttl. A window with no predicted users writes nothing and says so. The FM is the
bundle's own (base with its adapter merged in: specrec.nearline.bundle_fm), the model of its item_repr
and user_state rows, loaded once per process and bundle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.speculator import select_pairs
from specrec.clock import to_utc
from specrec.config import Config, SpeculationConfig, parse_duration
from specrec.errors import SpecrecError
from specrec.io import read_parquet, write_parquet
from specrec.nearline import bundles
from specrec.nearline.bundle_fm import bundle_fm
from specrec.nearline.materialize import history_file
from specrec.nearline.store import offline_dir
from specrec.speculation import replay
from specrec.speculation.models import as_hstu
from specrec.speculation.pairs import PairFn, PairResult, pair_batches

if TYPE_CHECKING:
    from feast import FeatureStore

    from mlflow import MlflowClient
    from specrec.speculation.registry import LoadedPredictor

log = logging.getLogger(__name__)

VIEW = "speculative"


def _live_rows(store: FeatureStore, users: np.ndarray, bundle_id: str) -> dict[int, pd.Timestamp]:
    """user_id -> expires_at of the user's stored row of this bundle (users without one are absent)."""
    if len(users) == 0:
        return {}
    got = store.get_online_features(
        features=["speculative:expires_at"],
        entity_rows=[{"user_id": int(u), "bundle_id": bundle_id} for u in users],
    ).to_dict()
    return {
        int(u): pd.Timestamp(e)
        for u, e in zip(got["user_id"], got["expires_at"], strict=True)
        if e is not None
    }


def _check_ttl(store: FeatureStore, ttl: pd.Timedelta) -> None:
    """Rows must expire before Feast's view ttl, or Feast would drop rows still meant to serve."""
    view_ttl = store.get_feature_view(VIEW).ttl
    if view_ttl and ttl > pd.Timedelta(view_ttl):
        raise SpecrecError(
            f"speculation.ttl = {ttl} is longer than the Feast view `speculative` ttl ({view_ttl}); "
            "lower speculation.ttl or raise the view's ttl in features/definitions.py."
        )


def current(world: replay.World, user: int, computed_at: int, newest: int) -> bool:
    """Whether a row computed at `computed_at` (unix s) still holds what a precompute now would write: no
    event of the user since (`newest`: the user's newest event), and, with `request_state: window`, its
    candidates came from the nearline state serving reads now, i.e. the user had no event between the
    start of the row's window (epoch-aligned, as the deployments fire) and the row: an event-triggered
    row took the candidates of its window's state, which the next window's state has moved past."""
    if newest >= computed_at:
        return False
    if world.spec.request_state == "event":
        return True
    w_start = computed_at - computed_at % world.window_s
    both = world.count_before(np.array([user, user]), np.array([w_start, computed_at]))
    return bool(both[0] == both[1])


def choose(
    world: replay.World, predictor: LoadedPredictor, s: int, live: dict[int, pd.Timestamp], budget: int
) -> tuple[dict[int, tuple[int, np.ndarray]], int]:
    """user_id -> (history, item_idx) to precompute at s, and the predicted users skipped as fresh."""
    plan = replay.plan(world, predictor.predictor, s, 1)
    users, p = plan.by_window.get(0, (np.zeros(0, np.int64), np.zeros(0)))
    hist = world.count_before(users, s)
    last = np.array(
        [world.history((int(u), int(h)))[1][-1] if h else 0 for u, h in zip(users, hist, strict=True)]
    )
    fresh = np.array(
        [
            int(u) in live
            and live[int(u)].timestamp() > s
            and current(world, int(u), int(live[int(u)].timestamp()) - world.ttl_s, int(last[i]))
            for i, u in enumerate(users)
        ],
        bool,
    )
    users, p, hist = users[~fresh], p[~fresh], hist[~fresh]
    world.ensure([(int(u), int(h)) for u, h in zip(users, hist, strict=True)])
    pos, rank = select_pairs(p * (hist > 0), predictor.predictor.curve, budget, world.spec.min_p_active)
    chosen = {}
    for u in np.unique(pos):
        top = world.top((int(users[u]), int(hist[u])))
        ranks = rank[pos == u]
        items = np.unique(top[ranks[ranks < len(top)]])
        if len(items):
            chosen[int(users[u])] = (int(hist[u]), items)
    return chosen, int(fresh.sum())


@dataclass(frozen=True)
class WindowPlan:
    """A window's work, decided at its start: the users to precompute (sorted by id), their histories and
    items, and the accounting of what has become known; no FM pair has been computed yet."""

    when: pd.Timestamp
    bundle: bundles.Bundle
    expires_at: pd.Timestamp
    base: dict[str, Any]  # as_of, bundle_id, skipped_fresh_users and account_past's keys
    users: list[int]
    histories: list[tuple[np.ndarray, np.ndarray]]  # per user: (item_idx, timestamps) known at `when`
    candidates: list[np.ndarray]  # per user: item_idx to precompute
    item_ids: list[np.ndarray]  # per user: the same items as item ids (what rows carry)


@dataclass(frozen=True)
class _Setting:
    """What a precompute at `when` works with: the serving bundle, the champion predictor, the replay
    world of the bundle's FM cut at `when`, the item table and the rows' ttl."""

    when: pd.Timestamp
    bundle: bundles.Bundle
    predictor: LoadedPredictor
    world: replay.World
    items: pd.DataFrame
    ttl: pd.Timedelta


def _setting(
    cfg: Config, as_of: object, store: FeatureStore, client: MlflowClient, spec: SpeculationConfig
) -> _Setting:
    """Load what a precompute at as_of needs (the ttl checked against the Feast view's)."""
    from specrec.speculation.registry import load_champion

    when = to_utc(as_of)
    ttl = parse_duration("speculation.ttl", spec.ttl)
    _check_ttl(store, ttl)
    bundle = bundles.serving(client)
    if bundle is None:
        raise SpecrecError(
            "no specrec-bundle@serving: materialize a bundle first (materialize_item_embeddings)."
        )
    predictor = load_champion(client)
    fm = as_hstu(bundle_fm(cfg, client, bundle).model, bundle.fm_version)  # what its other rows come from
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    known = items[items["first_seen"] < when]
    world = replay.World(fm, events, known["item_idx"].to_numpy(), spec, when)
    return _Setting(when, bundle, predictor, world, items, ttl)


def _plan(at: _Setting, base: dict[str, Any], chosen: dict[int, tuple[int, np.ndarray]]) -> WindowPlan:
    """The plan of the chosen users: user_id -> (history, item_idx)."""
    users = sorted(chosen)
    item_id = dict(zip(at.items["item_idx"].to_numpy(), at.items["item_id"].to_numpy(), strict=True))
    return WindowPlan(
        at.when,
        at.bundle,
        at.when + at.ttl,
        base,
        users,
        [at.world.history((u, chosen[u][0])) for u in users],
        [chosen[u][1] for u in users],
        [np.array([item_id[i] for i in chosen[u][1]], np.int64) for u in users],
    )


def plan_window(
    cfg: Config, as_of: object, store: FeatureStore, client: MlflowClient, window: str | None = None
) -> WindowPlan:
    """Predict the window starting at as_of for the serving bundle and choose its users and items."""
    spec = cfg.speculation if window is None else replace(cfg.speculation, window=window)
    at = _setting(cfg, as_of, store, client, spec)
    world, s, bundle_id = at.world, int(at.when.timestamp()), at.bundle.bundle_id
    candidates = replay.plan(world, at.predictor.predictor, s, 1).by_window.get(
        0, (np.zeros(0, np.int64), None)
    )[0]
    live = _live_rows(store, candidates, bundle_id)
    chosen, skipped = choose(world, at.predictor, s, live, spec.budget)
    base = {"as_of": at.when.isoformat(), "bundle_id": bundle_id, "trigger": "window"}
    base["skipped_fresh_users"] = skipped
    base |= account_past(store, world, at.items, bundle_id, s)
    return _plan(at, base, chosen)


def window_start(when: pd.Timestamp, window: pd.Timedelta) -> pd.Timestamp:
    """The start of the precompute window holding `when`: windows are aligned on the epoch, as the
    `*/5` (or `every`) deployments fire."""
    return when.floor(window)


def _history_files(store: FeatureStore, bundle_id: str, lo: pd.Timestamp, hi: pd.Timestamp) -> list[Path]:
    """This view's parquet history files of the bundle written in [lo, hi), oldest first. A file is named by
    its write's instant (history_file), which is also its rows' event_timestamp, so the name alone says
    whether its rows fall in the span: with a micro-batch per second of events a day holds thousands of
    files, and the accounting needs the last ttl's only."""
    folder = offline_dir(store, VIEW) / f"bundle={bundle_id}"
    if not folder.exists():
        return []
    chosen = []
    for f in sorted(folder.glob("as_of=*.parquet")):
        written = pd.to_datetime(f.name[len("as_of=") :][:17], format="%Y-%m-%dT%H%M%S", utc=True)
        if lo <= written < hi:
            chosen.append(f)
    return chosen


def _spent(store: FeatureStore, bundle_id: str, lo: pd.Timestamp, hi: pd.Timestamp) -> int:
    """Pairs this view's rows of the bundle computed in [lo, hi), from its parquet history."""
    return sum(
        int(pd.read_parquet(f, columns=["item_ids"])["item_ids"].map(len).sum())
        for f in _history_files(store, bundle_id, lo, hi)
    )


def plan_events(
    cfg: Config, as_of: object, users: list[int], store: FeatureStore, client: MlflowClient
) -> WindowPlan:
    """The precompute triggered by users' events (`speculation.trigger: event`): `as_of` is the end of the
    micro-batch that saw them (events before it are known). Each user the predictor expects back within
    the ttl (P >= min_p_active) whose live row is older than the user's newest event gets a row with the
    history through as_of and the candidates of the user state serving reads when the row lands, while
    the budget of the window holding as_of (pairs already written in it counted) lasts."""
    from models.speculator import activity_features

    spec = cfg.speculation
    at = _setting(cfg, as_of, store, client, spec)
    when, bundle, world, ttl = at.when, at.bundle, at.world, at.ttl
    length = parse_duration("speculation.window", spec.window)
    delay = parse_duration("speculation.event_delay", spec.event_delay)
    s = int(when.timestamp())
    ids = np.unique(np.asarray(users, np.int64))
    dense = world.times.dense(ids)
    unknown = ids[dense < 0]
    if len(unknown):
        log.info("event-triggered precompute at %s: no events before it for users %s", when, unknown[:10])
    ids, dense = ids[dense >= 0], dense[dense >= 0]
    p = (
        at.predictor.predictor.model.predict(
            activity_features(world.times, dense, np.full(len(ids), s), world.window_s)
        )
        if len(ids)
        else np.zeros(0)
    )
    likely = p >= spec.min_p_active
    hist = world.count_before(ids, s)
    live = _live_rows(store, ids[likely], bundle.bundle_id)
    newest = {
        int(u): int(world.history((int(u), int(h)))[1][-1]) for u, h in zip(ids, hist, strict=True) if h
    }
    fresh = np.array(
        [
            int(u) in live and live[int(u)].timestamp() - ttl.total_seconds() > newest.get(int(u), 0)
            for u in ids
        ],
        bool,
    )
    pick = likely & ~fresh & (hist > 0)
    w0 = window_start(when, length)
    left = spec.budget - _spent(store, bundle.bundle_id, w0, when)
    serving = replay.serving_history(
        world, ids, np.full(len(ids), s), np.full(len(ids), s + int(delay.total_seconds()) - 1), 0
    )
    chosen: dict[int, tuple[int, np.ndarray]] = {}
    for i in np.flatnonzero(pick)[np.argsort(-p[pick], kind="stable")]:  # likeliest first
        top = np.unique(world.top((int(ids[i]), int(serving[i])))[: spec.candidates])
        if len(top) and len(top) <= left:
            chosen[int(ids[i])] = (int(hist[i]), top)
            left -= len(top)
    base = {
        "as_of": when.isoformat(),
        "bundle_id": bundle.bundle_id,
        "trigger": "event",
        "triggering_users": float(len(users)),
        "skipped_unlikely_users": float((~likely).sum()),
        "skipped_fresh_users": float((likely & fresh).sum()),
        "budget_left": float(left),
    }
    return _plan(at, base, chosen)


def precompute_events(
    cfg: Config,
    as_of: object,
    users: list[int],
    store: FeatureStore,
    client: MlflowClient,
    compute: PairFn | None = None,
) -> dict[str, Any]:
    """The event-triggered precompute of `users` at as_of (plan_events), computed and written at once."""
    started = time.perf_counter()
    return _compute_and_write(
        cfg, store, client, plan_events(cfg, as_of, users, store, client), started, compute
    )


def compute_pairs(
    cfg: Config,
    client: MlflowClient,
    bundle: bundles.Bundle,
    histories: list[tuple[np.ndarray, np.ndarray]],
    candidates: list[np.ndarray],
    compute: PairFn | None = None,
) -> PairResult:
    """The bundle FM's pair vectors of these users' candidates, in FM batches of speculation.batch_users
    (a failing batch is retried, then PrecomputeError)."""
    fm = as_hstu(bundle_fm(cfg, client, bundle).model, bundle.fm_version)
    spec, fn = cfg.speculation, compute or fm.pair_repr
    return pair_batches(fn, histories, candidates, fm.config.max_len, spec.batch_users, spec.batch_retries)


def write_window(
    cfg: Config, store: FeatureStore, plan: WindowPlan, result: PairResult | None, started: float
) -> dict[str, Any]:
    """Write the window's rows (all of them at once) and return what was done; `started` is the
    time.perf_counter() of this process when the window began."""
    when = plan.when
    if not plan.users or result is None:
        log.info("speculative precompute at %s: no predicted users; nothing written", when.isoformat())
        return plan.base | {
            "users": 0,
            "pairs": 0,
            "rows_written": 0,
            "cpu_s": 0.0,
            "retries": 0,
            "seconds": time.perf_counter() - started,
            "message": "no predicted users; nothing written",
        }
    users = plan.users
    frame = pd.DataFrame(
        {
            "user_id": np.asarray(users, np.int64),
            "bundle_id": plan.bundle.bundle_id,
            "item_ids": plan.item_ids,
            "pair_repr": [v.reshape(-1) for v in result.vectors],
            "pair_score": list(result.scores),
            "expires_at": plan.expires_at,
            "event_timestamp": when,
        }
    )
    write_rows(cfg, store, frame, plan.bundle.bundle_id, when)
    pairs = int(sum(len(c) for c in plan.candidates))
    out = plan.base | {
        "users": len(users),
        "pairs": pairs,
        "rows_written": len(frame),
        "cpu_s": result.cpu_s,
        "retries": result.retries,
        "seconds": time.perf_counter() - started,
        "message": f"{len(users)} users, {pairs} pairs written",
    }
    log.info("speculative precompute at %s: %s", when.isoformat(), out)
    return out


def precompute_window(
    cfg: Config,
    as_of: object,
    store: FeatureStore,
    client: MlflowClient,
    window: str | None = None,
    compute: PairFn | None = None,
) -> dict[str, Any]:
    """Precompute the window starting at as_of for the serving bundle; return what was done."""
    started = time.perf_counter()
    return _compute_and_write(
        cfg, store, client, plan_window(cfg, as_of, store, client, window), started, compute
    )


def _compute_and_write(
    cfg: Config,
    store: FeatureStore,
    client: MlflowClient,
    plan: WindowPlan,
    started: float,
    compute: PairFn | None,
) -> dict[str, Any]:
    """Compute the plan's pair vectors (if it has users) and write its rows at once."""
    result = None
    if plan.users:
        result = compute_pairs(cfg, client, plan.bundle, plan.histories, plan.candidates, compute)
    return write_window(cfg, store, plan, result, started)


def write_rows(
    cfg: Config, store: FeatureStore, frame: pd.DataFrame, bundle_id: str, when: pd.Timestamp
) -> None:
    """Write complete rows offline (parquet history) and online; pair vectors vary in length per user.

    Another run at the same instant (a rerun of the window, or a micro-batch ending on a window start)
    adds to that instant's history file: its rows replace only the same users' rows there."""
    from specrec.nearline.online_writer import write_online

    path = offline_dir(store, VIEW) / f"bundle={bundle_id}" / history_file(when)
    history = frame
    if path.exists():
        before = pd.read_parquet(path)
        history = pd.concat([before[~before["user_id"].isin(frame["user_id"])], frame], ignore_index=True)
    write_parquet(history, path)
    write_online(
        store,
        VIEW,
        frame,
        batch_rows=cfg.feast.write_batch_rows,
        progress=False,
        vector_dims={"pair_repr": None, "pair_score": None},
    )


def account_past(
    store: FeatureStore, world: replay.World, items: pd.DataFrame, bundle_id: str, s: int
) -> dict[str, float]:
    """Accounting of what has become known by s, from the rows this view wrote (its parquet history):
    coverage of the requests of the window that just ended, and precision of the rows written one ttl
    ago (their life is over: expired, or replaced by a newer row)."""
    from specrec.speculation.accounting import Ledger

    w, ttl = world.window_s, world.ttl_s
    lo = s - ttl - w  # rows older than this cannot be live in the last window
    span = [pd.Timestamp(x, unit="s", tz="UTC") for x in (lo, s)]
    parts = [pd.read_parquet(f) for f in _history_files(store, bundle_id, *span)]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(rows):
        at = (pd.to_datetime(rows["event_timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
            "1s"
        )
        rows = rows.assign(at=at)[(at >= lo) & (at < s)].sort_values("at", kind="stable")
    index_of = dict(zip(items["item_id"].to_numpy(), items["item_idx"].to_numpy(), strict=True))
    reqs = world.requests(lo, s)
    # only two windows are reported: the last one's requests, and the rows written in the first (one ttl
    # ago) through their life; their users' rows and requests are all either needs, so the retrieval
    # for everyone else's requests of the past ttl is skipped
    first_users = rows.loc[rows["at"] < lo + w, "user_id"].to_numpy() if len(rows) else np.zeros(0, np.int64)
    users = np.union1d(first_users, reqs.user[reqs.t >= s - w])
    reqs = reqs.only(np.isin(reqs.user, users))
    if len(rows):
        rows = rows[rows["user_id"].isin(users)]
    ledger, done = Ledger(ttl), set()
    events = [(int(t), 1, i) for i, t in enumerate(reqs.t)] + [(int(r.at), 0, r) for r in rows.itertuples()]
    for t, kind, what in sorted(events, key=lambda e: (e[0], e[1])):
        k = (t - lo) // w
        if kind == 0:
            idx = np.array([index_of.get(int(i), -1) for i in what.item_ids], np.int64)
            ledger.precompute(k, int(what.user_id), t, -1, idx)
            done.add(k)
        else:
            cand = world.top((int(reqs.user[what]), int(reqs.history[what])))[: world.spec.candidates]
            if len(cand):
                ledger.request(k, int(reqs.user[what]), t, cand)
    ledger.finish()
    per = ledger.per_window().set_index("window")
    last, first = (s - lo) // w - 1, 0
    out = {"last_window_requests": 0.0, "last_window_served": 0.0, "last_window_hits": 0.0}
    if last in per.index:
        out = {k: float(per.loc[last, c]) for k, c in zip(out, ("requests", "served", "hits"), strict=True)}
    # the same keys in every window's run (NaN where nothing applies): MLflow runs line up in the compare view
    nan = float("nan")
    out |= {"last_window_coverage": nan, "expired_rows_pairs": 0.0, "expired_rows_precision": nan}
    if out["last_window_served"]:
        out["last_window_coverage"] = out["last_window_hits"] / out["last_window_served"]
    if first in per.index and per.loc[first, "pairs"] > 0:
        out["expired_rows_pairs"] = float(per.loc[first, "pairs"])
        out["expired_rows_precision"] = float(per.loc[first, "used"] / per.loc[first, "pairs"])
    return out
