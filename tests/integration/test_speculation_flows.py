"""Speculation end to end in the temp project: retrain_speculator and speculative_precompute as real Prefect
flow runs against the real MLflow registry and Feast store; an empty window; a failing FM batch (retried,
and all-or-nothing); expired and other-bundle rows are misses for the real scorer."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from flows.retrain_speculator import retrain_speculator
from flows.speculative_precompute import speculative_precompute
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.materialize import history_file, load_fm, materialize_items
from specrec.nearline.store import apply, offline_dir
from specrec.nearline.user_state import update_user_state
from specrec.speculation import replay
from specrec.speculation.pairs import PrecomputeError
from specrec.speculation.precompute import plan_window, precompute_window, write_rows
from specrec.speculation.registry import REGISTERED_MODEL, load_champion
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import copy_project, prefect_harness, write_params
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def own(tiny_project: TinyProject, tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    """A copy of the session's tiny project: the bundle, rows and runs this module writes stay out of the
    project other modules copy (test_report reads every run of its copy)."""
    folder = tmp_path_factory.mktemp("speculation") / "project"
    return TinyProject(copy_project(tiny_project.cfg, folder, ("feast", "kv_cache")), tiny_project.fm)


@pytest.fixture
def tiny(own: TinyProject) -> TinyProject:
    """This module's copy, with MLflow pointed at its store for the test."""
    use_project_store(own.cfg)
    return own


@pytest.fixture(scope="module")
def trained(own: TinyProject, harness: None) -> dict:  # type: ignore[type-arg]
    """A serving bundle of the tiny project's copy (cycle 1), then one retrain_speculator flow run at
    cycle 2."""
    torch.set_num_threads(1)
    cfg = own.cfg
    use_project_store(cfg)
    store, client = apply(cfg), mlflow.MlflowClient()
    clock = ReplayClock.from_config(cfg.clock)
    parts = bundles.champion_parts(client) | {"codebook": "speculation-test"}
    bundle = bundles.register(client, parts, experiment_id(cfg.root, "materialize"))
    materialize_items(cfg, clock.cycle(1).as_of, bundle, store, client, progress=False)
    bundles.promote_serving(client, bundle)
    update_user_state(cfg, clock.cycle(1).as_of, bundle, store)
    state = retrain_speculator(
        as_of=clock.cycle(2).as_of.isoformat(), params=str(own.params), return_state=True
    )
    assert state.is_completed(), state
    return {"result": state.result(), "bundle": bundle, "store": store, "client": client}


def _windows(tiny: TinyProject, min_users: int) -> list[pd.Timestamp]:
    """Window starts in cycle 2 where the champion predicts at least min_users users (most first)."""
    cfg = tiny.cfg
    clock = ReplayClock.from_config(cfg.clock)
    start, end = clock.cycle(2).start, clock.cycle(2).as_of
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    fm = load_fm(bundles.serving(mlflow.MlflowClient()).fm_version)
    world = replay.World(fm, events, np.arange(1, 10), cfg.speculation, end)
    s0 = int(start.timestamp())
    plan = replay.plan(
        world, load_champion(mlflow.MlflowClient()).predictor, s0, world.n_windows(s0, int(end.timestamp()))
    )
    ks = sorted(
        (k for k, (u, _) in plan.by_window.items() if len(u) >= min_users),
        key=lambda k: -len(plan.by_window[k][0]),
    )
    return [pd.Timestamp(s0 + k * world.window_s, unit="s", tz="UTC") for k in ks]


def _rows(store: object, users: list[int], bundle_id: str) -> dict[int, object]:
    got = store.get_online_features(  # type: ignore[attr-defined]
        features=[
            "speculative:item_ids",
            "speculative:pair_repr",
            "speculative:pair_score",
            "speculative:expires_at",
        ],
        entity_rows=[{"user_id": u, "bundle_id": bundle_id} for u in users],
    ).to_dict()
    return {
        u: (i, r, s, e)
        for u, i, r, s, e in zip(
            users, got["item_ids"], got["pair_repr"], got["pair_score"], got["expires_at"], strict=True
        )
        if i
    }


def test_retrain_registers_gates_and_logs_the_accounting(trained: dict, tiny: TinyProject) -> None:  # type: ignore[type-arg]
    result, client = trained["result"], trained["client"]
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == result["version"]
    assert 0 < result["coverage"] <= 1 and 0 < result["precision"] <= 1
    run = client.get_run(result["run_id"])
    assert run.info.experiment_id == experiment_id(tiny.cfg.root, "speculation")
    assert run.info.run_name == str(ReplayClock.from_config(tiny.cfg.clock).cycle(2).as_of.date())
    for key in (
        "coverage",
        "precision",
        "wasted_cpu_s",
        "staleness_p50_s",
        "coverage_b50",
        "recent_heuristic_coverage_b1000",
    ):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "window_coverage")) > 1  # per-window accounting
    assert "plots/coverage_vs_budget.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    # the gate's decision is on the version; a second run at the same as_of is judged against the champion
    version = client.get_model_version(REGISTERED_MODEL, result["version"])
    assert version.tags["gate_decision"] == "promoted" and "gate_f1" in version.tags


def test_precompute_writes_complete_rows_that_the_scorer_reads(trained: dict, tiny: TinyProject) -> None:  # type: ignore[type-arg]
    store, bundle, client = trained["store"], trained["bundle"], trained["client"]
    when = _windows(tiny, 1)[0]
    planned = plan_window(tiny.cfg, when, store, client).users
    state = speculative_precompute(as_of=when.isoformat(), params=str(tiny.params), return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["rows_written"] == out["users"] == len(planned) >= 1
    assert out["pairs"] <= tiny.cfg.speculation.budget
    events = pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "interactions.parquet")
    users = sorted(events.loc[events["timestamp"] < when, "user_id"].unique().tolist())
    rows = _rows(store, users, bundle.bundle_id)
    assert len(rows) == out["users"]
    for items, flat, score, expires in rows.values():
        assert len(flat) == len(items) * tiny.cfg.fm.dim and len(score) == len(items)  # one complete row
        assert pd.Timestamp(expires) == when + pd.Timedelta(tiny.cfg.speculation.ttl)
    # a rerun of the same window finds every row it wrote fresh and recomputes none of them; the budget
    # they no longer need goes to the next likeliest users, if any were left out
    replanned = plan_window(tiny.cfg, when, store, client).users
    assert replanned and not set(replanned) & set(planned)  # (the budget held only some: rows are added)
    again = speculative_precompute(as_of=when.isoformat(), params=str(tiny.params))
    assert again["skipped_fresh_users"] == out["users"] and again["rows_written"] == len(replanned)
    # one ttl later the window's rows have lived their life: the flow accounts for them from the history
    spec = tiny.cfg.speculation
    later = when + pd.Timedelta(spec.ttl) + pd.Timedelta(spec.window)
    # only the files of the accounted span are read (their names say when they were written): a file from
    # before it, here one that is not even parquet, is never opened
    older = (
        offline_dir(store, "speculative")
        / f"bundle={bundle.bundle_id}"
        / history_file(when - pd.Timedelta("1s"))
    )
    older.write_bytes(b"not parquet: reading it would fail")
    try:
        acc = speculative_precompute(as_of=later.isoformat(), params=str(tiny.params))
    finally:
        older.unlink()
    # (the rerun's rows joined that instant's history file, they did not replace it)
    assert acc["expired_rows_pairs"] == out["pairs"] + again["pairs"]
    assert 0 <= acc["expired_rows_precision"] <= 1
    recent = events[
        (events["timestamp"] >= later - pd.Timedelta(spec.window)) & (events["timestamp"] < later)
    ]
    assert acc["last_window_requests"] == len(recent)  # every such user has a history by then
    assert acc["last_window_served"] == len(recent) * spec.candidates


def test_window_with_no_predicted_users_writes_nothing(trained: dict, tiny: TinyProject) -> None:  # type: ignore[type-arg]
    # nobody is a candidate after a quiet stretch longer than the activity horizon; the replay span has
    # none longer than the default 7 days, so this window is judged with a 6-hour horizon
    spec = dataclasses.replace(tiny.cfg.speculation, activity_horizon="6h")
    params = tiny.cfg.root / "params_horizon_6h.yaml"
    write_params(dataclasses.replace(tiny.cfg, speculation=spec), params)
    events = pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "interactions.parquet")
    t = events["timestamp"].sort_values()
    gaps = t.diff()
    horizon = pd.Timedelta(spec.activity_horizon)
    quiet = t[
        (gaps > horizon + pd.Timedelta("2h")) & (t > ReplayClock.from_config(tiny.cfg.clock).start)
    ].index[0]
    when = (t.loc[:quiet].iloc[-2] + horizon + pd.Timedelta("1h")).floor("5min")
    offline = tiny.cfg.root / "data" / "feast" / "offline" / "speculative"
    before = sorted(offline.rglob("*.parquet")) if offline.exists() else []
    out = speculative_precompute(as_of=when.isoformat(), params=str(params))
    assert out["rows_written"] == 0 and out["users"] == 0 and "no predicted users" in out["message"]
    assert (sorted(offline.rglob("*.parquet")) if offline.exists() else []) == before


def test_failing_fm_batch_is_retried_and_never_leaves_partial_rows(trained: dict, tiny: TinyProject) -> None:  # type: ignore[type-arg]
    store, client, bundle = trained["store"], trained["client"], trained["bundle"]
    cfg = dataclasses.replace(tiny.cfg, speculation=dataclasses.replace(tiny.cfg.speculation, batch_users=1))
    windows = _windows(tiny, 2)
    fm = load_fm(bundle.fm_version)
    calls = {"n": 0}

    def flaky(items: torch.Tensor, ts: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch fails once
            raise RuntimeError("simulated FM failure")
        return fm.pair_repr(items, ts, cand)

    out = precompute_window(cfg, windows[-1], store, client, compute=flaky)
    assert out["retries"] == 1 and out["rows_written"] == out["users"] >= 2
    assert calls["n"] == out["users"] + 1

    def broken(
        items: torch.Tensor, ts: torch.Tensor, cand: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] > 1:  # the first batch succeeds, every later one fails
            raise RuntimeError("FM down")
        return fm.pair_repr(items, ts, cand)

    calls["n"] = 0
    # a window with at least two users to compute (users whose rows earlier runs left fresh are skipped)
    target = next(w for w in windows if len(plan_window(cfg, w, store, client).users) >= 2)
    events = pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "interactions.parquet")
    users = sorted(events.loc[events["timestamp"] < target, "user_id"].unique().tolist())
    before = _rows(store, users, bundle.bundle_id)
    with pytest.raises(PrecomputeError, match="after 2 retries"):
        precompute_window(cfg, target, store, client, compute=broken)
    assert calls["n"] == 1 + 1 + cfg.speculation.batch_retries  # batch 1 ok, batch 2 tried 3 times
    after = _rows(store, users, bundle.bundle_id)
    assert {u: pd.Timestamp(r[3]) for u, r in after.items()} == {
        u: pd.Timestamp(r[3]) for u, r in before.items()
    }


def test_expired_and_other_bundle_rows_are_misses_for_the_scorer(trained: dict, tiny: TinyProject) -> None:  # type: ignore[type-arg]
    from specrec.online.app import build_scorer
    from specrec.online.service import RecommendRequest

    store, bundle = trained["store"], trained["bundle"]
    scorer, _ = build_scorer(tiny.cfg, watch_seconds=3600)
    assert scorer.state.bundle.bundle_id == bundle.bundle_id
    users = sorted(scorer.state.user_snapshot)[:3]
    dim = scorer.state.dim

    def hits(user: int) -> int:
        return int(asyncio.run(scorer.recommend(RecommendRequest(user_id=user, k=50)))["speculative_hits"])

    def row(user: int, bundle_id: str, items: list[int], expires: pd.Timestamp) -> pd.DataFrame:
        n = len(items)
        return pd.DataFrame(
            {
                "user_id": [user],
                "bundle_id": [bundle_id],
                "item_ids": [np.asarray(items, np.int64)],
                "pair_repr": [np.ones(n * dim, np.float32)],
                "pair_score": [np.ones(n, np.float32)],
                "expires_at": [expires],
                "event_timestamp": [pd.Timestamp("2018-02-01", tz="UTC")],
            }
        )

    now = pd.Timestamp(time.time(), unit="s", tz="UTC")
    fresh, expired, other = users
    for u in users:
        assert hits(u) == 0
    candidates = {u: asyncio.run(scorer.recommend(RecommendRequest(user_id=u, k=50)))["items"] for u in users}
    write_rows(
        tiny.cfg,
        store,
        row(fresh, bundle.bundle_id, candidates[fresh], now + pd.Timedelta("1h")),
        bundle.bundle_id,
        now,
    )
    write_rows(
        tiny.cfg,
        store,
        row(expired, bundle.bundle_id, candidates[expired], now - pd.Timedelta("1s")),
        bundle.bundle_id,
        now,
    )
    write_rows(
        tiny.cfg,
        store,
        row(other, "b-other-bundle", candidates[other], now + pd.Timedelta("1h")),
        "b-other-bundle",
        now,
    )
    assert hits(fresh) == 50  # a fresh row of the serving bundle: every candidate it holds is a hit
    assert hits(expired) == 0  # expired: a miss
    assert hits(other) == 0  # another bundle's row is never read


def test_quality_compares_the_scorer_with_and_without_pairs_and_both_upper_bounds(
    trained: dict,  # type: ignore[type-arg]
    tiny: TinyProject,
) -> None:
    """The benchmark's quality replay on cycle 2: every variant is ranked on the same requests, the paired
    differences are the differences of the means, and the ratios follow from the means."""
    from models.scorer import ScorerConfig, ThinScorer
    from specrec.online.distill_data import item_stat_table
    from specrec.speculation.evaluate import evaluate_span

    cfg = tiny.cfg
    clock = ReplayClock.from_config(cfg.clock)
    start, end = clock.cycle(2).start, clock.cycle(2).as_of
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
    fm = load_fm(bundles.serving(trained["client"]).fm_version)
    index = items.loc[items["first_seen"] < start, "item_idx"].to_numpy()  # as benchmarks/speculation.py
    world = replay.World(fm, events, index, cfg.speculation, end)
    torch.manual_seed(0)
    scorer = ThinScorer(ScorerConfig(dim=cfg.fm.dim)).eval()
    with torch.no_grad():
        scorer.miss.normal_()  # a miss must look different from a hit for "with" to differ from "without"
    table = item_stat_table(
        events[events["timestamp"] < start], items, start, pd.Timedelta(cfg.clock.cadence)
    )
    s0, e0 = int(start.timestamp()), int(end.timestamp())
    d = evaluate_span(
        world, load_champion(trained["client"]).predictor, s0, e0, scorer, lambda t: table
    ).default
    assert d["quality_requests"] > 0
    for a, b in replay.PAIRED:
        assert d[f"ndcg@10_{a}_minus_{b}"] == pytest.approx(d[f"ndcg@10_{a}"] - d[f"ndcg@10_{b}"], abs=1e-9)
        assert d[f"ndcg@10_{a}_minus_{b}_ci_low"] <= d[f"ndcg@10_{a}_minus_{b}_ci_high"]
    for ratio, upper in (
        ("quality_recovered", "full_fm"),
        ("quality_recovered_of_all_pairs", "all_pairs"),
        ("quality_recovered_of_all_pairs_window", "all_pairs_window"),
    ):
        gain = d[f"ndcg@10_{upper}"] - d["ndcg@10_without"]
        expected = (d["ndcg@10_with"] - d["ndcg@10_without"]) / gain if gain > 0 else float("nan")
        assert d[ratio] == pytest.approx(expected, nan_ok=True)
    if d["coverage"] == 0:
        assert d["ndcg@10_with"] == d["ndcg@10_without"]


def test_event_triggered_precompute_writes_the_history_through_the_event(
    trained: dict,  # type: ignore[type-arg]
    tiny: TinyProject,
) -> None:
    """`speculative_precompute(as_of, users=...)` (trigger: event) as a real flow run: a row with the bundle
    FM's pair vectors of the history through the micro-batch, expiring one ttl after it; a rerun finds it
    fresh; users (given as an event trigger renders them) without a history are named, not written."""
    from specrec.nearline.bundle_fm import bundle_fm
    from specrec.speculation.models import as_hstu

    cfg, store, client, bundle = tiny.cfg, trained["store"], trained["client"], trained["bundle"]
    clock = ReplayClock.from_config(cfg.clock)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
    span = events[
        (events["timestamp"] >= clock.cycle(2).start) & (events["timestamp"] < clock.cycle(2).as_of)
    ]
    logged = experiment_id(cfg.root, "speculation")
    windows_before = len(mlflow.search_runs([logged], output_format="list"))
    out, at, user = None, None, None
    for ev in span.sort_values("timestamp").iloc[::7].itertuples():  # an event whose user is expected back
        at = ev.timestamp.floor("1s") + pd.Timedelta("1s")
        user = int(ev.user_id)
        state = speculative_precompute(
            as_of=at.isoformat(), users=f"[{user}]", params=str(tiny.params), return_state=True
        )
        assert state.is_completed(), state
        out = state.result()
        if out["users"] == 1:
            break
    assert out is not None and at is not None and user is not None and out["users"] == 1, out
    assert out["trigger"] == "event" and 0 < out["pairs"] <= cfg.speculation.budget
    got_items, flat, _, expires = _rows(store, [user], bundle.bundle_id)[user]
    assert pd.Timestamp(expires) == at + pd.Timedelta(cfg.speculation.ttl)
    fm = as_hstu(bundle_fm(cfg, client, bundle).model, bundle.fm_version)
    world = replay.World(fm, events, items["item_idx"].to_numpy(), cfg.speculation, at)
    hist = int(world.count_before(np.array([user]), int(at.timestamp()))[0])
    assert hist == int(((events["user_id"] == user) & (events["timestamp"] < at)).sum())
    idx = items.set_index("item_id").loc[list(got_items), "item_idx"].to_numpy()
    want, _ = replay._full_fm(world, [(user, hist)], [idx])
    np.testing.assert_allclose(np.asarray(flat).reshape(len(idx), -1), want[0], atol=1e-4)
    again = speculative_precompute(as_of=at.isoformat(), users=[user], params=str(tiny.params))
    assert again["rows_written"] == 0 and again["skipped_fresh_users"] == 1
    nobody = speculative_precompute(as_of=at.isoformat(), users="987654321", params=str(tiny.params))
    assert nobody["rows_written"] == 0 and nobody["triggering_users"] == 1
    # micro-batches are Prefect runs, not MLflow runs: `speculation` holds the windows' runs only
    assert len(mlflow.search_runs([logged], output_format="list")) == windows_before


def test_cli_refuses_bad_input_in_one_line(root: object) -> None:
    import subprocess
    import sys

    for args, expected in (
        (["precompute", "--as-of", "2018-02-01", "--window", "soon"], "--window = 'soon'"),
        (["train", "--as-of", "yesterday-ish"], "as_of = 'yesterday-ish'"),
        (["precompute", "--as-of", "2018-02-01", "--users", "7,eight"], "users = '7,eight'"),
    ):
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "specrec"), "speculation", *args],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in proc.stderr
