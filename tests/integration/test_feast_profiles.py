"""The Feast repo with the real `feast` CLI, and the production profile's Redis online store."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlflow
from specrec.clock import ReplayClock
from specrec.config import ServicesConfig
from specrec.nearline import bundles
from specrec.nearline.materialize import load_fm, materialize_items
from specrec.nearline.store import apply
from specrec.tracking import experiment_id, local_uri
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _exp(tiny: TinyProject) -> str:
    """The temp project's `materialize` experiment (artifacts inside the project, never ./mlruns)."""
    return experiment_id(tiny.cfg.root, "materialize")


def test_feast_cli_applies_the_repo(root: Path, tmp_path: Path) -> None:
    repo = tmp_path / "features"
    shutil.copytree(root / "features", repo, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "data" / "feast").mkdir(
        parents=True
    )  # in the repo this folder is committed (data/feast/.gitkeep)
    feast = [str(Path(sys.executable).parent / "feast"), "-c", str(repo)]
    env = os.environ | {"FEAST_USAGE": "False"}
    applied = subprocess.run([*feast, "apply"], capture_output=True, text=True, env=env, timeout=300)
    assert applied.returncode == 0, applied.stderr
    listed = subprocess.run(
        [*feast, "feature-views", "list"], capture_output=True, text=True, env=env, timeout=300
    )
    assert listed.returncode == 0
    for view in ("item_repr", "item_stats", "user_state", "speculative"):
        assert view in listed.stdout
    services = subprocess.run([*feast, "feature-services", "list"], capture_output=True, text=True, env=env)
    assert "scorer_v1" in services.stdout
    assert (tmp_path / "data" / "feast" / "online_store.db").is_file()  # paths resolve beside the repo


def test_production_profile_on_redis(
    tiny: TinyProject, redis_url: str
) -> None:
    services = ServicesConfig(  # servers named in params.yaml `services:` (the environment is the fallback)
        redis=redis_url,
        feast_registry_url=f"sqlite:///{tiny.cfg.root / 'data' / 'feast_sql_registry.db'}",
        mlflow_tracking_uri=local_uri(tiny.cfg.root),
    )
    cfg = dataclasses.replace(tiny.cfg, profile="production", services=services)
    store = apply(cfg)
    assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
    client = mlflow.MlflowClient()
    bundle = bundles.register(client, bundles.champion_parts(client) | {"codebook": "redis-test"}, _exp(tiny))
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    result = materialize_items(cfg, as_of, bundle, store, client, progress=False)
    assert result.rows_written > 0
    got = store.get_online_features(
        features=["item_repr:embedding", "item_repr:item_idx"],
        entity_rows=[{"item_id": 1, "bundle_id": bundle.bundle_id}],
    ).to_dict()
    table = load_fm(bundle.fm_version).item_embeddings().detach().numpy()
    assert np.array_equal(np.asarray(got["embedding"][0], dtype=np.float32), table[got["item_idx"][0]])
