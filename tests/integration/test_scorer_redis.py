"""The scorer on the production profile's Redis online store: Redis is stopped under load and started
again; the scorer answers degraded (never an error) while it is down and recovers by itself."""

from __future__ import annotations

import dataclasses
import shutil
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
from specrec.services import RedisProcess
from specrec.tracking import experiment_id, local_uri
from tests.conftest import require
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own (the session one must not be stopped), persisted to disk so a
    restart brings the materialized rows back, as a production Redis with persistence would."""
    require(shutil.which("redis-server") is not None, "redis-server (Debian package redis-server)")
    server = RedisProcess(tmp_path, RedisProcess.SNAPSHOT)
    server.start()
    yield server
    server.stop()


def test_redis_stopped_then_restarted(
    tiny: TinyProject, redis_server: RedisProcess, tmp_path: Path
) -> None:
    # Feast on this test's Redis (and a SQL registry of its own), MLflow where the tiny project has it
    servers = {
        "redis": redis_server.url,
        "feast_registry_url": f"sqlite:///{tmp_path / 'feast_registry.db'}",
        "mlflow_tracking_uri": tiny.cfg.services.mlflow_tracking_uri or local_uri(tiny.cfg.root),
    }
    cfg = dataclasses.replace(
        tiny.cfg, profile="production", services=dataclasses.replace(tiny.cfg.services, **servers)
    )
    client = mlflow.MlflowClient()
    previous = bundles.serving(client)
    store = apply(cfg)
    assert store.config.online_store.type == "redis"
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    bundle = bundles.register(
        client,
        bundles.champion_parts(client) | {"codebook": "redis-restart-test"},
        experiment_id(cfg.root, "materialize"),
    )
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    update_user_state(cfg, as_of, bundle, store)
    bundles.promote_serving(client, bundle)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    user = int(events[events["timestamp"] < as_of]["user_id"].iloc[-1])
    try:
        scorer, watch = build_scorer(cfg, watch_seconds=3600)
        with serve_in_thread(create_app(scorer, watch)) as url:
            body = {"user_id": user, "k": 5}
            up = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
            assert not up["degraded"] and not up["cold_start"] and len(up["items"]) == 5
            assert httpx.get(f"{url}/readyz").status_code == 200

            redis_server.shutdown_save()
            down = [httpx.post(f"{url}/recommend", json=body, timeout=30) for _ in range(5)]
            assert all(r.status_code == 200 for r in down)
            assert all(r.json()["degraded"] and len(r.json()["items"]) == 5 for r in down)
            assert httpx.get(f"{url}/readyz").status_code == 503
            assert httpx.post(f"{url}/score", json={"user_id": user, "item_ids": up["items"]}).json()[
                "degraded"
            ]

            redis_server.start()  # same port and data folder: the rows come back from disk
            deadline, back = time.monotonic() + 30, None
            while time.monotonic() < deadline:
                back = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
                if not back["degraded"]:
                    break
                time.sleep(0.2)
            assert back is not None and not back["degraded"], "no recovery after Redis came back"
            assert back["items"] == up["items"]  # the same bundle, the same rows: the same answer
            assert httpx.get(f"{url}/readyz").status_code == 200
            metrics = httpx.get(f"{url}/metrics").text
            reasons = ("store_error", "store_timeout", "store_circuit_open")
            assert any(f'specrec_fallbacks_total{{reason="{r}"}}' in metrics for r in reasons)
    finally:
        if previous is not None:  # leave the project serving what it served before
            bundles.promote_serving(client, previous)
