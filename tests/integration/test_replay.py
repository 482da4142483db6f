"""`specrec replay` on a tiny project of its own: two cycles run as real Prefect flows, the scorer as a
real uvicorn server on loopback queried over HTTP, one MLflow run per cycle in `replay` with identical
metric keys; a replayed cycle is not replayed twice; the scorer's TTL clock is the simulated time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlflow
from specrec.clock import ReplayClock
from specrec.config import Config
from specrec.nearline.store import apply
from specrec.replay.run import SimClock, next_events, replay
from specrec.replay.traffic import METRIC_KEYS
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import prefect_harness
from tests.integration.cycle_project import cycle_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory, root: Path, harness: None) -> tuple[Config, list]:  # type: ignore[type-arg]
    cfg = cycle_project(tmp_path_factory, root)
    use_project_store(cfg)
    apply(cfg)
    return cfg, replay(cfg, cfg.root / "params.yaml", 2)


def test_replay_logs_one_run_per_cycle_with_the_same_keys(replayed: tuple[Config, list]) -> None:  # type: ignore[type-arg]
    cfg, rows = replayed
    clock = ReplayClock.from_config(cfg.clock)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    runs = mlflow.search_runs([experiment_id(cfg.root, "replay")], output_format="list")
    assert sorted(r.info.run_name for r in runs) == [clock.cycle(1).name, clock.cycle(2).name]
    client = mlflow.MlflowClient()
    for row, cycle in zip(rows, clock.cycles()[:2], strict=False):
        run = mlflow.get_run(row["run_id"])
        m = run.data.metrics
        assert set(m) == set(METRIC_KEYS)
        assert run.data.tags["as_of"] == cycle.as_of.isoformat() and run.info.run_name == cycle.name
        span = next_events(events, cycle)
        assert m["requests"] == min(cfg.replay.requests, len(span)) > 0  # whole windows, cut at the budget
        assert m["errors"] == 0 and 0 <= m["degraded"] <= m["requests"]
        assert 0 <= m["ndcg_at_10"] <= m["hr_at_10"] <= 1
        assert 0 <= m["spec_hits"] <= m["requests"] and m["spec_coverage"] == m["spec_hits"] / m["requests"]
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"]
        assert m["cycle_seconds"] > 0
        summary = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/replay/summary.json")
        assert summary["latency_ms"]["n"] == m["requests"] and summary["errors"] == 0
        assert summary["cycle_steps"]["lora"] and summary["windows"] >= 1
        # speculation.trigger: event (the default): the micro-batches of the requests' seconds were
        # precomputed once their rows would have landed (each a precompute_events call; gated inside)
        assert cfg.speculation.trigger == "event" and summary["event_precompute_runs"] >= 1
        cycle_run = client.get_run(run.data.tags["cycle_run_id"])
        assert cycle_run.data.tags["as_of"] == cycle.as_of.isoformat()


def test_a_replayed_cycle_is_not_replayed_again(replayed: tuple[Config, list]) -> None:  # type: ignore[type-arg]
    cfg, rows = replayed
    again = replay(cfg, cfg.root / "params.yaml", 1)
    assert again[0]["run_id"] == rows[0]["run_id"]
    assert len(mlflow.search_runs([experiment_id(cfg.root, "replay")], output_format="list")) == 2


def test_speculative_rows_expire_against_the_simulated_clock(replayed: tuple[Config, list]) -> None:  # type: ignore[type-arg]
    from specrec.online.app import build_scorer
    from specrec.online.service import RecommendRequest
    from specrec.speculation.precompute import write_rows

    cfg, _ = replayed
    t0 = pd.Timestamp("2018-03-01", tz="UTC")
    sim = SimClock(t0.timestamp())
    scorer, _ = build_scorer(cfg, watch_seconds=3600, now=sim)
    user = sorted(scorer.state.user_snapshot)[0]
    items = asyncio.run(scorer.recommend(RecommendRequest(user_id=user, k=20)))["items"]
    bundle_id, n = scorer.state.bundle.bundle_id, len(items)
    row = pd.DataFrame(
        {
            "user_id": [user],
            "bundle_id": [bundle_id],
            "item_ids": [np.asarray(items, np.int64)],
            "pair_repr": [np.ones(n * scorer.state.dim, np.float32)],
            "pair_score": [np.ones(n, np.float32)],
            "expires_at": [t0 + pd.Timedelta("1h")],
            "event_timestamp": [t0],
        }
    )
    write_rows(cfg, apply(cfg), row, bundle_id, t0)

    def hits() -> int:
        return int(asyncio.run(scorer.recommend(RecommendRequest(user_id=user, k=20)))["speculative_hits"])

    sim.t = (t0 + pd.Timedelta("30min")).timestamp()
    assert hits() == n  # fresh at the simulated time: every candidate of the row is a hit
    sim.t = (t0 + pd.Timedelta("2h")).timestamp()
    assert hits() == 0  # past expires_at in simulated time: a miss


def test_cli_refuses_bad_cycles_in_one_line(root: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "specrec"), "replay", "--cycles", "99"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--cycles 99" in proc.stderr and "1..9" in proc.stderr
