"""The scorer as users call it: a real uvicorn server on loopback, a real HTTP client, the temp project's
real Feast store and MLflow registry; bad input, cold start, degraded answers, and a bundle swap."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

import mlflow
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.materialize import materialize_items
from specrec.nearline.store import apply
from specrec.nearline.user_state import update_user_state
from specrec.online.app import build_scorer
from specrec.online.check import serve_in_thread
from specrec.online.service import create_app
from specrec.services import free_port
from specrec.tracking import experiment_id
from tests.conftest import PROFILE
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tiny_project: TinyProject) -> Iterator[tuple[str, object]]:
    """Materialize a bundle of the tiny project, then run the scorer on a free port."""
    from specrec.tracking import use_project_store

    cfg = tiny_project.cfg
    use_project_store(cfg)
    store, client = apply(cfg), mlflow.MlflowClient()
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    bundle = bundles.register(
        client,
        bundles.champion_parts(client) | {"codebook": "service-test"},
        experiment_id(cfg.root, "materialize"),
    )
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    bundles.promote_serving(client, bundle)
    update_user_state(cfg, as_of, bundle, store)
    scorer, watch = build_scorer(cfg, watch_seconds=0.5)
    with serve_in_thread(create_app(scorer, watch)) as url:
        yield url, scorer


def _known_user(tiny: TinyProject) -> tuple[int, list[int]]:
    events = pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "interactions.parquet")
    known = events[events["timestamp"] < ReplayClock.from_config(tiny.cfg.clock).cycle(1).as_of]
    user = int(known["user_id"].iloc[-1])
    return user, known[known["user_id"] == user]["item_id"].tolist()


def test_recommend_known_user(served: tuple[str, object], tiny: TinyProject) -> None:
    url, scorer = served
    user, history = _known_user(tiny)
    body = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}).json()
    assert len(body["items"]) == 10 and not body["cold_start"] and not body["degraded"]
    assert body["bundle_id"] == scorer.state.bundle.bundle_id
    assert not set(body["items"]) & set(history[-20:])  # recent items excluded
    assert body["scores"] == sorted(body["scores"], reverse=True)


def test_specrec_serve_command_answers_like_the_in_process_scorer(
    served: tuple[str, object], tiny: TinyProject
) -> None:
    """`specrec serve` as users start it: a subprocess that finds the project's stores from params.yaml
    alone (no MLflow URI inherited), serving the same bundle and the same answer as the scorer above."""
    url, scorer = served
    user, _ = _known_user(tiny)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    cmd = [str(Path(sys.executable).parent / "specrec"), "serve", "--port", str(port), "--faiss-threads", "1"]
    cmd += ["--deadline-ms", "5000", "--params", str(tiny.params)]
    log = tiny.cfg.root / f"serve_{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tiny.cfg.root, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"specrec serve exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"specrec serve not ready in 180 s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        sub = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 10}).json()
        here = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}).json()
        assert sub["bundle_id"] == scorer.state.bundle.bundle_id  # type: ignore[attr-defined]
        assert not sub["degraded"] and not sub["cold_start"] and len(sub["items"]) == 10
        if not here["degraded"]:  # the in-process server keeps its 50 ms store deadline
            assert sub["items"] == here["items"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cold_start_bad_input_and_unknown_items(served: tuple[str, object], tiny: TinyProject) -> None:
    url, _ = served
    cold = httpx.post(f"{url}/recommend", json={"user_id": 10**9, "k": 5}).json()
    assert cold["cold_start"] and len(cold["items"]) == 5
    for bad in (
        {"user_id": 1, "k": 0},
        {"user_id": 1, "k": 1001},
        {"user_id": -1},
        {"k": 3},
        {"user_id": "x"},
    ):
        r = httpx.post(f"{url}/recommend", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"][-1] in ("k", "user_id")
    assert httpx.post(f"{url}/recommend", content=b"{not json").status_code == 422
    user, _ = _known_user(tiny)
    scored = httpx.post(f"{url}/score", json={"user_id": user, "item_ids": [1, 2, 987654321]}).json()
    assert scored["unknown_items"] == [987654321] and set(scored["scores"]) == {"1", "2"}
    assert (
        httpx.post(f"{url}/score", json={"user_id": user, "item_ids": list(range(1001))}).status_code == 422
    )
    assert "/recommend" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_metrics_and_readiness(served: tuple[str, object]) -> None:
    url, _ = served
    assert httpx.get(f"{url}/readyz").json()["ready"]
    text = httpx.get(f"{url}/metrics").text
    for name in (
        'specrec_stage_seconds_count{stage="total"}',
        'specrec_stage_seconds_count{stage="retrieval"}',
        "specrec_fallbacks_total",
        "specrec_serving_bundle_info",
    ):
        assert name in text


@pytest.mark.skipif(
    PROFILE == "production",
    reason="locks the embedded profile's SQLite online store; test_scorer_redis stops Redis instead",
)
def test_slow_store_gives_degraded_answer_then_recovers(
    served: tuple[str, object], tiny: TinyProject
) -> None:
    import sqlite3

    url, _ = served
    user, _ = _known_user(tiny)
    lock = sqlite3.connect(tiny.cfg.root / "data" / "feast" / "online_store.db", timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # every read of the online store now waits: the store is "slow"
    try:
        slow = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=30)
    finally:
        lock.rollback()
        lock.close()
    assert slow.status_code == 200
    assert slow.json()["degraded"] and len(slow.json()["items"]) == 5
    time.sleep(1)  # let the blocked read drain from the pool
    again = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}).json()
    assert not again["degraded"]  # recovered by itself
    assert 'specrec_fallbacks_total{reason="store_timeout"}' in httpx.get(f"{url}/metrics").text


def test_bundle_swap_is_atomic(served: tuple[str, object], tiny: TinyProject) -> None:
    url, scorer = served
    cfg, client = tiny.cfg, mlflow.MlflowClient()
    store = apply(cfg)
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    new = bundles.register(
        client,
        bundles.champion_parts(client) | {"codebook": "service-test-2"},
        experiment_id(cfg.root, "materialize"),
    )
    old_id = scorer.state.bundle.bundle_id
    seen: set[str] = set()
    materialize_items(cfg, as_of, new, store, client, progress=False)  # moves the alias once complete
    update_user_state(cfg, as_of, new, store)
    user, _ = _known_user(tiny)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}).json()
        seen.add(body["bundle_id"])
        if body["bundle_id"] == new.bundle_id:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert new.bundle_id in seen and seen <= {old_id, new.bundle_id}


def test_trained_scorer_is_registered_and_served(tiny: TinyProject) -> None:
    import dataclasses

    from specrec.online.train_scorer import REGISTERED_MODEL, train_scorer
    from specrec.registry import CHAMPION, alias_version

    cfg = dataclasses.replace(
        tiny.cfg, scorer=dataclasses.replace(tiny.cfg.scorer, epochs=3, max_examples=120, candidates=50)
    )
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    result = train_scorer(cfg, as_of)
    client = mlflow.MlflowClient()
    assert alias_version(client, REGISTERED_MODEL, CHAMPION) is not None
    run = mlflow.get_run(result["run_id"])
    assert run.info.run_name == str(as_of.date())
    for key in (
        "with_pair_ndcg_at_10",
        "without_pair_ndcg_at_10",
        "full_fm_ndcg_at_10",
        "retrieval_ndcg_at_10",
    ):
        assert key in run.data.metrics
    losses = [m.value for m in client.get_metric_history(result["run_id"], "train_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]

    store = apply(cfg)
    parts = bundles.champion_parts(client)
    assert parts["scorer"] == alias_version(client, REGISTERED_MODEL, CHAMPION)
    bundle = bundles.register(
        client, parts | {"codebook": "with-scorer"}, experiment_id(cfg.root, "materialize")
    )
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    update_user_state(cfg, as_of, bundle, store)
    scorer, _ = build_scorer(cfg)
    assert scorer.state.bundle.bundle_id == bundle.bundle_id and scorer.state.scorer is not None
    user, _ = _known_user(tiny)
    from specrec.online.service import RecommendRequest

    body = asyncio.run(scorer.recommend(RecommendRequest(user_id=user, k=7)))
    assert len(body["items"]) == 7 and not body["degraded"]


def test_states_written_after_the_bundle_loaded_reach_retrieval(
    served: tuple[str, object], tiny: TinyProject
) -> None:
    """A user whose first state is written after the scorer loaded its bundle is served from it, not as a
    cold start; and a returning user's next request retrieves with the state its last request read."""
    import numpy as np

    url, scorer = served
    cfg = tiny.cfg
    clock = ReplayClock.from_config(cfg.clock)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    first = events.groupby("user_id")["timestamp"].min()
    late = first[(first >= clock.cycle(1).as_of) & (first < clock.cycle(2).as_of)].index
    assert len(late), "the tiny project has no user first seen in cycle 2"
    new_user, known_user = int(late[0]), _known_user(tiny)[0]
    serving = bundles.serving(mlflow.MlflowClient())  # earlier tests may have moved the alias: wait for the
    deadline = time.monotonic() + 60  # scorer's watcher to serve it, so the rows below are its bundle's
    while scorer.state.bundle.bundle_id != serving.bundle_id:  # type: ignore[attr-defined,union-attr]
        assert time.monotonic() < deadline, "the scorer did not swap to the serving bundle in 60 s"
        time.sleep(0.2)
    state = scorer.state  # type: ignore[attr-defined]
    assert new_user not in state.user_snapshot
    before = state.user_snapshot[known_user].copy()
    store = apply(cfg)
    update_user_state(cfg, clock.cycle(2).as_of, state.bundle, store)  # the nearline tick of a later window
    fresh = store.get_online_features(
        features=["user_state:state"],
        entity_rows=[{"user_id": known_user, "bundle_id": state.bundle.bundle_id}],
    ).to_dict()["state"][0]
    assert not np.allclose(fresh, before)  # the known user has new events: a new state
    saved, scorer.deadline_s = scorer.deadline_s, 10.0  # type: ignore[attr-defined]
    try:
        body = httpx.post(f"{url}/recommend", json={"user_id": new_user, "k": 10}).json()
        assert not body["cold_start"] and not body["degraded"] and len(body["items"]) == 10, body
        assert new_user in state.user_snapshot  # kept as the user's retrieval query from now on
        httpx.post(f"{url}/recommend", json={"user_id": known_user, "k": 10}).raise_for_status()
        np.testing.assert_allclose(state.user_snapshot[known_user], fresh, rtol=1e-6)
    finally:
        scorer.deadline_s = saved  # type: ignore[attr-defined]
    cold = httpx.post(f"{url}/recommend", json={"user_id": 10**9, "k": 5}).json()
    assert cold["cold_start"]  # no state anywhere: still popularity
