"""The scorer as users call it: a real uvicorn server on loopback, a real HTTP client, the temp project's
real Feast store and MLflow registry; bad input, cold start, degraded answers, and a bundle swap."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
import uvicorn

import mlflow
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.materialize import materialize_items
from specrec.nearline.store import apply
from specrec.nearline.user_state import update_user_state
from specrec.online.app import build_scorer
from specrec.online.service import create_app
from specrec.tracking import experiment_id
from tests.integration.conftest import TinyProject, _free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tiny_project: TinyProject) -> Iterator[tuple[str, object]]:
    """Materialize a bundle of the tiny project, then run the scorer on a free port."""
    from specrec.tracking import use_project_store

    cfg = tiny_project.cfg
    use_project_store(cfg.root)
    store, client = apply(cfg), mlflow.MlflowClient()
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    bundle = bundles.register(
        client,
        bundles.champion_parts(client) | {"scorer": "service-test"},
        experiment_id(cfg.root, "materialize"),
    )
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    bundles.promote_serving(client, bundle)
    update_user_state(cfg, as_of, bundle, store)
    scorer, watch = build_scorer(cfg, watch_seconds=0.5)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(scorer, watch), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    yield url, scorer
    server.should_exit = True
    thread.join(timeout=10)


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


def test_slow_store_gives_degraded_answer(served: tuple[str, object], tiny: TinyProject) -> None:
    url, scorer = served
    user, _ = _known_user(tiny)
    scorer.deadline_s = 1e-6  # no store answers this fast: the user side must degrade, not fail
    try:
        body = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}).json()
    finally:
        scorer.deadline_s = 0.05
    assert body["degraded"] and len(body["items"]) == 5


def test_bundle_swap_is_atomic(served: tuple[str, object], tiny: TinyProject) -> None:
    url, scorer = served
    cfg, client = tiny.cfg, mlflow.MlflowClient()
    store = apply(cfg)
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    new = bundles.register(
        client,
        bundles.champion_parts(client) | {"scorer": "service-test-2"},
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
