"""Speculation: the predictor on a structured synthetic log, the ledger's accounting on a constructed case,
candidate windows against a brute force, features that cannot see the future, budget selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from models.hstu import HSTU, HSTUConfig
from models.speculator import (
    ActivityTimes,
    activity_features,
    candidate_windows,
    random_pairs,
    recent_users,
    select_pairs,
)
from specrec.config import SpeculationConfig
from specrec.speculation import replay
from specrec.speculation.accounting import Ledger

DAY = 86_400
T0 = 1_500_000_000 - 1_500_000_000 % DAY  # midnight UTC


def _synthetic_log(days: int, users: int = 24, seed: int = 0) -> pd.DataFrame:
    """Each user has one session a day at their own hour (on 70% of days): 12 events, 40 s apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        hour = u % 24
        for d in range(days):
            if rng.random() > 0.7:
                continue
            t = T0 + d * DAY + hour * 3600 + int(rng.integers(0, 600))
            for e in range(12):
                rows.append((u + 100, int(rng.integers(1, 60)), t + 40 * e))
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "sec"])
    frame["timestamp"] = pd.to_datetime(frame["sec"], unit="s", utc=True)
    frame["item_id"] = frame["item_idx"] + 1000
    frame["event_id"] = np.arange(len(frame))
    return frame.drop(columns="sec")


def _tiny_fm() -> HSTU:
    torch.manual_seed(0)
    return HSTU(HSTUConfig(n_items=60, max_len=10, dim=8, n_layers=1, dropout=0.0)).eval()


@pytest.mark.parametrize("trigger", ["window", "event"])
def test_predictor_beats_random_and_recent_window_on_structured_log(trigger: str) -> None:
    events = _synthetic_log(days=24)
    spec = SpeculationConfig(window="5min", ttl="1h", candidates=10, max_rank=20, budget=40, min_p_active=0.1)
    spec = dataclasses.replace(spec, budgets=[40], epochs=15, trigger=trigger)
    end = pd.Timestamp(T0 + 24 * DAY, unit="s", tz="UTC")
    world = replay.World(_tiny_fm(), events, np.arange(1, 61), spec, end)
    split, stop = T0 + 16 * DAY, T0 + 24 * DAY
    predictor = replay.fit(world, T0, split)
    reqs = world.requests(split, stop)
    span = replay.plan(world, predictor, split, world.n_windows(split, stop))
    ctx = replay.context(world, reqs, predictor, span, seed=0)
    mine = replay.simulate(world, reqs, split, "predictor", spec.budget, ctx).ledger.summary(0.0)
    ctx["spend"] = replay.simulate(world, reqs, split, "predictor", spec.budget, ctx).spend
    rand = replay.simulate(world, reqs, split, "random", spec.budget, ctx).ledger.summary(0.0)
    # a session runs over 3 windows: from the second on its user is foreseeable, random pairs are not
    assert mine["coverage"] > 0.4 and mine["precision"] > 0.2
    assert mine["coverage"] > 5 * rand["coverage"]
    assert mine["pairs"] == rand["pairs"]  # random pairs at the same compute


def test_ledger_accounting_on_a_constructed_case() -> None:
    ledger = Ledger(ttl_s=100)
    ledger.precompute(0, user=1, computed_at=0, history=5, items=np.array([10, 11, 12, 13]), cpu_s=0.4)
    ledger.precompute(0, user=2, computed_at=0, history=3, items=np.array([20, 21]), cpu_s=0.2)
    _, hit = ledger.request(0, user=1, at=30, candidates=np.array([10, 11, 99]))  # 2 of 3 hit, age 30
    assert hit.tolist() == [True, True, False]
    ledger.request(0, user=2, at=150, candidates=np.array([20, 21]))  # expired at 100: a miss
    ledger.request(1, user=3, at=160, candidates=np.array([30]))  # no row: a miss
    ledger.precompute(
        2, user=1, computed_at=200, history=6, items=np.array([11, 14])
    )  # replaces user 1's row
    ledger.request(2, user=1, at=260, candidates=np.array([10, 14]))  # 10 was only in the old row: 1 hit
    ledger.finish()
    s = ledger.summary(cpu_s_per_pair=0.1)
    # served 3 + 2 + 1 + 2 = 8, hits 2 + 1 = 3; precomputed 4 + 2 + 2 = 8, used 2 (10, 11) + 1 (14) = 3
    assert s["coverage"] == pytest.approx(3 / 8)
    assert s["precision"] == pytest.approx(3 / 8)
    assert s["wasted_pairs"] == 5 and s["wasted_cpu_s"] == pytest.approx(0.5)
    assert s["staleness_p50_s"] == 30 and s["staleness_max_s"] == 60
    assert s["staleness_mean_s"] == pytest.approx((30 * 2 + 60 * 1) / 3)
    per = ledger.per_window().set_index("window")
    assert per.loc[0, "pairs"] == 6 and per.loc[0, "used"] == 2 and per.loc[0, "cpu_s"] == pytest.approx(0.6)
    assert per.loc[1, "coverage"] == 0.0 and np.isnan(per.loc[1, "precision"])
    assert per.loc[2, "precision"] == pytest.approx(0.5)


def test_a_bundle_switch_ends_every_older_row() -> None:
    """Rows written before a serving-bundle switch are misses from the switch on, whatever their ttl; rows
    written at or after it live their ttl."""
    ledger = Ledger(ttl_s=1000, switches=np.array([500, 2000]))
    ledger.precompute(0, user=1, computed_at=100, history=5, items=np.array([10, 11]))
    ledger.precompute(0, user=2, computed_at=500, history=3, items=np.array([20]))
    assert ledger.rows[1].expires_at == 500 and ledger.rows[2].expires_at == 1500
    assert ledger.request(0, user=1, at=499, candidates=np.array([10]))[1].tolist() == [True]
    row, hit = ledger.request(1, user=1, at=500, candidates=np.array([10, 11]))
    assert row is None and not hit.any()
    assert ledger.request(1, user=2, at=1499, candidates=np.array([20]))[1].tolist() == [True]
    ledger.precompute(3, user=3, computed_at=1900, history=1, items=np.array([30]))
    assert ledger.rows[3].expires_at == 2000  # the second switch comes before the ttl
    ledger.finish()
    assert ledger.summary(0.0)["precision"] == pytest.approx(2 / 4)  # 10 and 20 served; 11 and 30 never


def test_candidate_windows_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 5, 200)
    secs = T0 + rng.integers(0, 2 * DAY, 200)
    times = ActivityTimes.build(users, secs, 1800)
    start, n, w, h = T0 + 3600, 500, 300, 5400
    dense, k = candidate_windows(times, start, n, w, h)
    got = set(zip(dense.tolist(), k.tolist(), strict=True))
    want = set()
    for d, u in enumerate(times.users):
        mine = secs[users == u]
        for kk in range(n):
            s = start + kk * w
            before = mine[mine < s]
            if len(before) and s - before.max() <= h:
                want.add((d, kk))
    assert got == want and len(dense) == len(got)


def test_features_do_not_see_events_at_or_after_their_instant() -> None:
    events = _synthetic_log(days=6)
    secs = events["timestamp"].astype("int64").to_numpy() // 1_000_000_000
    at = T0 + 3 * DAY + 7 * 3600 + 120
    full = ActivityTimes.build(events["user_id"].to_numpy(), secs, 1800)
    cut = ActivityTimes.build(events["user_id"].to_numpy()[secs < at], secs[secs < at], 1800)
    users = np.array([100, 107, 110])
    a = activity_features(full, full.dense(users), np.full(3, at), 300)
    b = activity_features(cut, cut.dense(users), np.full(3, at), 300)
    np.testing.assert_array_equal(a, b)


def test_budget_selection_rules() -> None:
    p = np.array([0.9, 0.05, 0.5])
    curve = np.array([1.0, 1.0, 0.5, 0.0])
    u, r = select_pairs(p, curve, budget=4, min_p=0.1)
    assert len(u) == 4 and 1 not in u and 3 not in r.tolist()  # below min_p / zero probability never chosen
    assert list(zip(u.tolist(), r.tolist(), strict=True))[:2] == [(0, 0), (0, 1)]
    u, r = recent_users(np.array([0, 3, 1]), n_per_user=2, budget=3)
    assert u.tolist() == [1, 1, 2] and r.tolist() == [0, 1, 0]
    u, r = random_pairs(3, 5, 7, np.random.default_rng(0))
    assert len(set(zip(u.tolist(), r.tolist(), strict=True))) == 7


def test_speculation_config_rejects_bad_values() -> None:
    from specrec.errors import ConfigError

    with pytest.raises(ConfigError, match="speculation.max_rank"):
        SpeculationConfig(candidates=200, max_rank=100)
    with pytest.raises(ConfigError, match="speculation.ttl"):
        SpeculationConfig(window="10min", ttl="5min")
    with pytest.raises(ConfigError, match="speculation.request_state"):
        SpeculationConfig(request_state="sometimes")


def test_a_predictor_fit_at_as_of_cannot_see_later_events() -> None:
    """The same fit from the log cut at as_of and from the whole log: identical weights and predictions."""
    events = _synthetic_log(days=12)
    spec = dataclasses.replace(SpeculationConfig(candidates=10, max_rank=20), epochs=2)
    as_of = pd.Timestamp(T0 + 8 * DAY, unit="s", tz="UTC")
    fm = _tiny_fm()
    fits = []
    for log in (events, events[events["timestamp"] < as_of]):
        world = replay.World(fm, log, np.arange(1, 61), spec, as_of)
        fits.append((world, replay.fit(world, T0, T0 + 8 * DAY)))
    (w1, a), (w2, b) = fits
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    np.testing.assert_array_equal(a.curve, b.curve)
    pa = replay.plan(w1, a, T0 + 8 * DAY - 3600, 12).by_window
    pb = replay.plan(w2, b, T0 + 8 * DAY - 3600, 12).by_window
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k][1], pb[k][1]) for k in pa)


def _burst_log() -> pd.DataFrame:
    """User 100: 5 events the day before, then a burst: two in second S, one at S+3, one at S+30, one at
    S+31. User 101: a history only (never requests in the span)."""
    s = T0 + DAY + 600
    rows = [(100, 1 + i, T0 + 3600 + 60 * i) for i in range(5)] + [
        (101, 7 + i, T0 + 7200 + i) for i in range(4)
    ]
    rows += [(100, 20, s), (100, 21, s), (100, 22, s + 3), (100, 23, s + 30), (100, 24, s + 31)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "sec"])
    frame["timestamp"] = pd.to_datetime(frame["sec"], unit="s", utc=True)
    frame["item_id"] = frame["item_idx"] + 1000
    frame["event_id"] = np.arange(len(frame))
    return frame.drop(columns="sec")


def _burst_world(**spec: object) -> tuple[replay.World, int]:
    """The burst log's world with the event trigger (5-minute windows, 1 h ttl, 10 candidates) and the
    start of the replayed day."""
    config = SpeculationConfig(window="5min", ttl="1h", candidates=10, max_rank=20, trigger="event", **spec)  # type: ignore[arg-type]
    start = T0 + DAY
    end = pd.Timestamp(start + DAY, unit="s", tz="UTC")
    return replay.World(_tiny_fm(), _burst_log(), np.arange(1, 61), config, end), start


@pytest.mark.parametrize("request_state", ["event", "window"])
def test_event_trigger_lands_after_the_delay_with_the_history_through_the_event(request_state: str) -> None:
    """`trigger: event`: one precompute per (user, second), readable event_delay after the event, holding the
    pair vectors of the history through the event for the candidates serving retrieves then."""
    world, start = _burst_world(budget=1000, min_p_active=0.0, event_delay="5s", request_state=request_state)
    spec = world.spec
    reqs = world.requests(start, start + DAY)
    assert reqs.t.tolist() == [start + 600] * 2 + [start + 603, start + 630, start + 631]
    ctx = replay.context(world, reqs, None, replay.Plan({}), seed=0) | {"record": True, "curve": np.ones(20)}
    out = replay.simulate(world, reqs, start, "predictor", spec.budget, ctx, vectors=True)
    # triggers: the second event of second S (not the first), S+3, S+30, S+31; each row replaces the last
    assert out.pairs_computed == 4 * spec.candidates
    hits = {int(reqs.t[r.request]): r for r in out.served}
    assert not hits[start + 600].hit.any() and not hits[start + 603].hit.any()  # S's row lands at S+5
    # S+30 reads the row of S+3 (landed S+8): its history is the request's own, so its vectors are the
    # full FM's at the request for every candidate the request serves (with either request state: the
    # window's state is the same, no window start in between)
    r = hits[start + 630]
    assert r.hit.all() and r.row_history == reqs.position[r.request] == 8 and r.row_items is not None
    fresh, _ = replay._full_fm(world, [(100, int(reqs.position[r.request]))], [r.candidates])
    got = np.asarray(r.row_vectors)[np.searchsorted(r.row_items, r.candidates)]
    np.testing.assert_allclose(got, fresh[0], atol=1e-5)
    # S+31 comes one second after S+30: that row has not landed, S+3's is read (one event older)
    late = hits[start + 631]
    assert late.row_items is not None and np.array_equal(late.row_items, r.row_items) and late.hit.any()
    assert late.row_history == reqs.position[late.request] - 1
    assert out.ledger.summary(0.0)["staleness_max_s"] == 631 - 608


def test_event_trigger_spends_the_window_budget_and_gates_on_the_predictor() -> None:
    world, start = _burst_world(budget=25, min_p_active=0.5, event_delay="1s")
    spec = world.spec
    reqs = world.requests(start, start + DAY)
    ctx = replay.context(world, reqs, None, replay.Plan({}), seed=0) | {"curve": np.ones(20)}
    ctx["event_p"] = np.array([0.9, 0.9, 0.9, 0.2, 0.9])  # S+30's user is not expected back
    out = replay.simulate(world, reqs, start, "predictor", spec.budget, ctx)
    # S and S+3 fit the window's 25 pairs (10 each); S+30 is gated out; S+31 would exceed the budget
    assert out.spend == {2: 20}  # the window of S (start + 600 s)
    heuristic = replay.simulate(world, reqs, start, "recent", 1000, ctx)
    # the heuristic triggers on every (user, second), ungated; at the next window's start the nearline state
    # moves to the burst's end, whose candidates no event row holds (their serving state was the window's)
    assert heuristic.spend == {2: 40, 3: 10}


def test_speculation_config_checks_the_trigger() -> None:
    from specrec.errors import ConfigError

    with pytest.raises(ConfigError, match="speculation.trigger"):
        SpeculationConfig(trigger="sometimes")
    with pytest.raises(ConfigError, match="speculation.event_delay"):
        SpeculationConfig(event_delay="500ms")
    with pytest.raises(ConfigError, match="speculation.event_delay"):
        SpeculationConfig(event_delay="2h", ttl="1h")


def test_users_parameter_takes_a_list_an_id_or_the_text_a_trigger_renders() -> None:
    from flows.speculative_precompute import parse_users
    from specrec.errors import SpecrecError

    assert parse_users(None) is None  # a window's precompute
    assert parse_users([3, 5]) == [3, 5] and parse_users(18) == [18]
    assert parse_users("3,5") == parse_users("[3, 5]") == parse_users(" 3 5 ") == [3, 5]
    with pytest.raises(SpecrecError, match="users = '3,five'"):
        parse_users("3,five")


@pytest.mark.parametrize("request_state", ["window", "event"])
def test_a_window_start_recomputes_event_rows_whose_candidates_came_from_an_older_state(
    request_state: str,
) -> None:
    """The flow's freshness rule (precompute.current) for a window start: a row is kept only when nothing
    happened since it was computed and, with the nearline window state, its candidates came from the state
    serving reads now; the replay simulation applies the same rule (replay._fresh)."""
    from specrec.speculation.precompute import current

    world, start = _burst_world(request_state=request_state)
    burst, newest = start + 600, start + 631  # user 100's burst: its events at S .. S+31
    after = current(world, 100, burst + 32, newest)  # the burst's last event-triggered row
    # window state: that row took the candidates of the state before the burst, which the next window's
    # start has moved past; the per-event state: it already holds what a precompute would write now
    assert after is (request_state == "event")
    assert current(world, 100, start + 900, newest)  # a row written at the next window start is current
    assert not current(world, 100, burst + 20, newest)  # events came after the row
