"""The nearline Prefect flows as real flow runs (Prefect test harness), against the temp project's real
Feast store and MLflow store: states, rows read back by a plain Feast client, MLflow runs, idempotence."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from flows.materialize_item_embeddings import materialize_item_embeddings
from flows.update_item_stats import update_item_stats
from flows.update_user_state import update_user_state
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.materialize import load_fm
from specrec.nearline.store import apply
from specrec.nearline.user_state import encode_users, extend_user
from specrec.tracking import experiment_id
from tests.conftest import prefect_harness
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


def _runs(tiny: TinyProject, view: str) -> list:  # type: ignore[type-arg]
    exp = experiment_id(tiny.cfg.root, "materialize")
    return mlflow.search_runs([exp], f"tags.view = '{view}'", output_format="list")


def test_flows_complete_and_are_idempotent(tiny: TinyProject, harness: None) -> None:
    store = apply(tiny.cfg)
    as_of = ReplayClock.from_config(tiny.cfg.clock).cycle(3).as_of.isoformat()
    params = str(tiny.params)

    state = materialize_item_embeddings(as_of=as_of, params=params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    serving = bundles.serving(mlflow.MlflowClient())
    assert serving is not None and result["bundle_id"] == serving.bundle_id

    stats_state = update_item_stats(as_of=as_of, params=params, return_state=True)
    assert stats_state.is_completed()
    n_stats_runs = len(_runs(tiny, "item_stats"))
    update_item_stats(as_of=as_of, params=params)  # rerun: same rows, no second MLflow run
    assert len(_runs(tiny, "item_stats")) == n_stats_runs == 1

    user_state = update_user_state(as_of=as_of, params=params, return_state=True)
    assert user_state.is_completed() and user_state.result()["bundle_id"] == serving.bundle_id
    # a bundle's user states are written before it serves; this run adds only users with newer events
    if result["mode"] == "complete":
        assert user_state.result()["rows_written"] == 0

    events = pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "interactions.parquet")
    known = events[events["timestamp"] < pd.Timestamp(as_of)]
    user = int(known["user_id"].iloc[-1])
    item = int(known["item_id"].iloc[-1])
    got = store.get_online_features(
        features=[
            "user_state:recent_items",
            "user_state:n_events",
            "item_stats:count_7c",
            "item_repr:embedding",
        ],
        entity_rows=[{"user_id": user, "item_id": item, "bundle_id": serving.bundle_id}],
    ).to_dict()
    mine = known[known["user_id"] == user]
    assert got["n_events"] == [len(mine)] and got["recent_items"][0][0] == int(mine["item_id"].iloc[-1])
    assert got["count_7c"][0] >= 1 and got["embedding"][0] is not None
    runs = _runs(tiny, "item_repr") + _runs(tiny, "user_state")
    assert all("rows_per_s" in r.data.metrics and r.info.run_name == as_of[:10] for r in runs)


def test_incremental_user_encoding_equals_full(tiny: TinyProject) -> None:
    model = load_fm(tiny.fm.version)
    rng = np.random.default_rng(0)
    items = rng.integers(1, 500, 25).astype(np.int64)
    ts = np.cumsum(rng.integers(1, 10_000, 25)).astype(np.int64) + 1_500_000_000
    first = encode_users(model, [(items[:10], ts[:10]), (items[:3], ts[:3])])[0]  # batched with padding
    step = extend_user(model, items[:18], ts[:18], first)
    step = extend_user(model, items, ts, step)
    full = encode_users(model, [(items, ts)])[0]
    assert step.n_events == full.n_events == 25
    assert torch.max(torch.abs(step.state - full.state)).item() < 1e-5
