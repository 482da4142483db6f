"""Dask-sharded nearline writes against the in-process ones, as real Prefect flow runs (test harness) on a
real dask LocalCluster (prefect-dask's DaskTaskRunner), with real Feast (SQLite; Redis on the production
profile) and MLflow stores.

Two copies of one project that differ only in `dask:` (address null vs local, 2 shards): the same
materialization and the same precompute window run in both, and the Feast rows read back must be the same.
A shard that fails once (a directory where its parquet file goes) is retried, and while it waits the
bundle is neither complete nor served.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mlflow
from flows.materialize_item_embeddings import materialize_item_embeddings
from flows.speculative_precompute import speculative_precompute
from specrec.clock import ReplayClock
from specrec.config import Config, DaskConfig, ServicesConfig
from specrec.fm.train import EXPERIMENT, _log_model
from specrec.nearline import bundles
from specrec.nearline.materialize import history_file, materialize_items
from specrec.nearline.store import apply, offline_dir, open_store
from specrec.registry import promote_if_better
from specrec.speculation import replay
from specrec.speculation.models import load_hstu
from specrec.speculation.registry import load_champion
from specrec.speculation.train import retrain_speculator
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import copy_project, prefect_harness, write_params
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = 2
LOCAL = {"address": "local", "shards": SHARDS, "n_workers": 2, "threads_per_worker": 1, "processes": False}


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


def _use(cfg: Config) -> tuple[mlflow.MlflowClient, str]:
    """Point MLflow (and the flows of this process) at this project's own store; the client and its URI."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # an inherited one would win over the project's store
    uri = use_project_store(cfg)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _project(tiny: TinyProject, root: Path) -> Config:
    """The tiny project's prepared data and Feast repo in `root` with stores of its own (empty), one user per
    FM batch (so a precompute window has several batches), a quick speculator and no Dask."""
    shutil.copytree(tiny.cfg.path(tiny.cfg.paths.prepared), root / "data" / "prepared")
    shutil.copytree(
        tiny.cfg.root / "features", root / "features", ignore=shutil.ignore_patterns("__pycache__")
    )
    # a quick speculator (the rows compared do not depend on its quality): fewer days, epochs and budgets
    spec = dataclasses.replace(
        tiny.cfg.speculation, batch_users=1, epochs=2, train_days=120, eval_days=7, budgets=[1000]
    )
    cfg = dataclasses.replace(
        tiny.cfg, root=root, speculation=spec, services=ServicesConfig(), dask=DaskConfig()
    )
    return write_params(cfg, root / "params.yaml")


@pytest.fixture(scope="module")
def projects(tiny_project: TinyProject, tmp_path_factory: pytest.TempPathFactory, harness: None) -> dict:  # type: ignore[type-arg]
    """Two projects, in-process and sharded, with the same champion FM and speculator (copied stores)."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("dask")
    single = _project(tiny_project, tmp / "single")
    client, _ = _use(single)
    with mlflow.start_run(experiment_id=experiment_id(single.root, EXPERIMENT)):
        version = _log_model(tiny_project.cfg.path(tiny_project.cfg.paths.fm))
    metric = single.fm.promote_metric
    promote_if_better(client, "specrec-fm", version, metric, tiny_project.fm.result.best_metrics[metric])
    clock = ReplayClock.from_config(single.clock)
    retrain_speculator(single, clock.cycle(2).as_of)
    copy = copy_project(single, tmp / "sharded")  # the same registry: same versions, same bundle ids
    sharded = write_params(dataclasses.replace(copy, dask=DaskConfig(**LOCAL)), copy.root / "params.yaml")
    assert sharded.dask.address == "local" and single.dask.address is None
    stores = {}
    for cfg in (single, sharded):
        _use(cfg)
        stores[cfg.root] = apply(cfg)
    return {"single": single, "sharded": sharded, "clock": clock, "stores": stores}


def _items(cfg: Config, as_of: pd.Timestamp) -> pd.DataFrame:
    items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
    return items[items["first_seen"] < as_of]


def _item_rows(store: Any, ids: list[int], bundle_id: str) -> dict[str, list]:  # type: ignore[type-arg]
    """What a plain Feast client of the project reads for these items of this bundle."""
    features = ["item_repr:embedding", "item_repr:item_idx", "item_repr:semantic_id"]
    rows = [{"item_id": i, "bundle_id": bundle_id} for i in ids]
    return store.get_online_features(features=features, entity_rows=rows).to_dict()


def _pair_rows(store: Any, users: list[int], bundle_id: str) -> dict[int, tuple]:  # type: ignore[type-arg]
    """user -> (item_ids, pair_repr, pair_score, expires_at) of this bundle's speculative rows."""
    features = [f"speculative:{f}" for f in ("item_ids", "pair_repr", "pair_score", "expires_at")]
    rows = [{"user_id": u, "bundle_id": bundle_id} for u in users]
    got = store.get_online_features(features=features, entity_rows=rows).to_dict()
    found = zip(users, got["item_ids"], got["pair_repr"], got["pair_score"], got["expires_at"], strict=True)
    return {u: (i, r, s, e) for u, i, r, s, e in found if i}


def _task_runs(name: str) -> list[Any]:
    """The harness server's runs of task `name` (not the parent task runs of subflows named like it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
    return [r for r in runs if r.name.startswith(f"{name}-")]


def _watch(uri: str, bundle: bundles.Bundle, obstacle: Path, seen: dict[str, Any]) -> None:
    """While the obstructed shard waits for its retry, look at the bundle; then clear the obstacle."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        waiting = [r for r in _task_runs("write_item_shard") if r.state and r.state.name == "AwaitingRetry"]
        if waiting:
            version = client.get_model_version(bundles.REGISTERED_MODEL, str(bundle.version))
            seen |= {"complete": version.tags.get("complete"), "serving": bundles.serving(client)}
            seen["retrying"] = len(waiting)
            break
        time.sleep(0.1)
    obstacle.rmdir()


def _flow_run(flow: Any, cfg: Config, as_of: pd.Timestamp) -> dict[str, Any]:
    """Run a flow on the project (its params.yaml) and return its result; the run must complete."""
    state = flow(as_of=as_of.isoformat(), params=str(cfg.root / "params.yaml"), return_state=True)
    assert state.is_completed(), state
    return state.result()  # type: ignore[no-any-return]


def test_sharded_materialization_equals_in_process_and_serves_only_when_every_shard_is_in(
    projects: dict,  # type: ignore[type-arg]
) -> None:
    single, sharded, clock, stores = (projects[k] for k in ("single", "sharded", "clock", "stores"))
    as_of = clock.cycle(1).as_of
    _use(single)
    one = _flow_run(materialize_item_embeddings, single, as_of)

    client, uri = _use(sharded)
    exp = experiment_id(sharded.root, "materialize")
    bundle = bundles.register(client, bundles.champion_parts(client), exp)
    assert bundle.bundle_id == one["bundle_id"]  # the same parts, so the same bundle
    # a directory where shard 2's parquet history goes: its first attempt fails (shard 1 is unaffected)
    folder = offline_dir(stores[sharded.root], "item_repr") / f"bundle={bundle.bundle_id}"
    obstacle = folder / history_file(as_of, 0, (1, SHARDS))
    obstacle.mkdir(parents=True)
    seen: dict[str, Any] = {}
    ctx = contextvars.copy_context()  # the harness's Prefect settings live in a context variable
    watcher = threading.Thread(target=ctx.run, args=(_watch, uri, bundle, obstacle, seen), daemon=True)
    watcher.start()
    two = _flow_run(materialize_item_embeddings, sharded, as_of)
    watcher.join(timeout=10)

    # while a shard waited for its retry the bundle was neither complete nor served
    assert seen.get("retrying", 0) >= 1, "the obstructed shard never waited for a retry"
    assert seen["complete"] == "false" and seen["serving"] is None
    shard_runs = _task_runs("write_item_shard")
    assert len(shard_runs) == SHARDS and sorted(r.run_count for r in shard_runs)[-1] >= 2
    assert all(r.state.is_completed() for r in shard_runs)
    # afterwards: complete, served, and the same rows as the in-process run
    assert bundles.is_complete(client, bundle) and bundles.serving(client).bundle_id == bundle.bundle_id
    assert two["rows_written"] == one["rows_written"] == len(_items(sharded, as_of)) > 0
    assert [two[k] for k in ("mode", "promoted", "bundle_id")] == [
        one[k] for k in ("mode", "promoted", "bundle_id")
    ]
    ids = _items(sharded, as_of)["item_id"].tolist()
    a = _item_rows(open_store(single), ids, one["bundle_id"])  # each project's own store, opened afresh
    b = _item_rows(open_store(sharded), ids, two["bundle_id"])
    for key in ("item_id", "bundle_id", "item_idx", "semantic_id"):
        assert a[key] == b[key], key
    assert all(e is not None for e in b["embedding"])
    assert np.allclose(np.asarray(a["embedding"]), np.asarray(b["embedding"]), rtol=0, atol=1e-6)
    # the offline history holds the same rows too, in one file per shard (and batch)
    assert len(list(folder.glob("*.parquet"))) == SHARDS
    h1, h2 = (
        pd.concat(pd.read_parquet(f) for f in sorted(d.glob("*.parquet"))).sort_values(
            "item_id", ignore_index=True
        )
        for d in (offline_dir(stores[single.root], "item_repr") / f"bundle={bundle.bundle_id}", folder)
    )
    assert h1["item_id"].tolist() == h2["item_id"].tolist()
    assert np.allclose(np.stack(h1["embedding"]), np.stack(h2["embedding"]), rtol=0, atol=1e-6)
    runs = mlflow.search_runs([exp], "tags.view = 'item_repr'", output_format="list")
    assert [r.data.tags.get("dask_shards") for r in runs] == [str(SHARDS)]


def _busiest_window(cfg: Config, client: mlflow.MlflowClient, clock: ReplayClock) -> pd.Timestamp:
    """The window start in cycle 2 where the speculator predicts the most users."""
    start, end = clock.cycle(2).start, clock.cycle(2).as_of
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    fm = load_hstu(bundles.serving(client).fm_version)
    world = replay.World(fm, events, np.arange(1, 10), cfg.speculation, end)
    s0 = int(start.timestamp())
    plan = replay.plan(world, load_champion(client).predictor, s0, world.n_windows(s0, int(end.timestamp())))
    k = max(plan.by_window, key=lambda w: (len(plan.by_window[w][0]), -w))
    return pd.Timestamp(s0 + k * world.window_s, unit="s", tz="UTC")


def test_sharded_precompute_writes_the_same_rows_as_in_process(projects: dict) -> None:  # type: ignore[type-arg]
    single, sharded, clock, stores = (projects[k] for k in ("single", "sharded", "clock", "stores"))
    for cfg in (single, sharded):  # a serving bundle (a no-op when the test above already wrote it)
        client, _ = _use(cfg)
        bundle = bundles.register(
            client, bundles.champion_parts(client), experiment_id(cfg.root, "materialize")
        )
        materialize_items(cfg, clock.cycle(1).as_of, bundle, open_store(cfg), client, progress=False)
    when = _busiest_window(single, _use(single)[0], clock)

    out = {}
    for cfg in (single, sharded):
        _use(cfg)
        out[cfg.root] = _flow_run(speculative_precompute, cfg, when)
    one, two = out[single.root], out[sharded.root]
    assert one["users"] >= SHARDS, "the window needs a user per shard at least"
    for key in ("users", "pairs", "rows_written", "bundle_id", "skipped_fresh_users"):
        assert one[key] == two[key], key
    events = pd.read_parquet(single.path(single.paths.prepared) / "interactions.parquet")
    users = sorted(events.loc[events["timestamp"] < when, "user_id"].unique().tolist())
    a = _pair_rows(open_store(single), users, one["bundle_id"])
    b = _pair_rows(open_store(sharded), users, two["bundle_id"])
    assert sorted(a) == sorted(b) and len(a) == one["users"]
    for u in a:
        assert a[u][0] == b[u][0] and pd.Timestamp(a[u][3]) == pd.Timestamp(b[u][3])
        assert np.allclose(a[u][1], b[u][1], rtol=0, atol=1e-6)
        assert np.allclose(a[u][2], b[u][2], rtol=0, atol=1e-6)
    shard_runs = _task_runs("pair_shard")
    assert len(shard_runs) == SHARDS and all(r.state.is_completed() for r in shard_runs)
    exp = experiment_id(sharded.root, "speculation")
    runs = mlflow.search_runs([exp], "tags.kind = 'precompute'", output_format="list")
    assert [r.data.tags.get("dask_shards") for r in runs] == [str(SHARDS)]
