"""The production profile end to end on real servers: Feast SQL registry on PostgreSQL, Redis online store,
MLflow tracking and model registry on PostgreSQL (a throw-away cluster started through specrec.services)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

import mlflow
from specrec.clock import ReplayClock
from specrec.config import ServicesConfig, load_config
from specrec.fm.train import EXPERIMENT, REGISTERED_MODEL, _log_model
from specrec.nearline import bundles
from specrec.nearline.materialize import load_fm, materialize_items
from specrec.nearline.store import apply
from specrec.registry import promote_if_better
from specrec.services import Postgres, postgres_bin
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import PROFILE, require
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster of our own on loopback with databases feast and mlflow, removed afterwards."""
    require(postgres_bin() is not None, "PostgreSQL (Debian's postgresql; `make system-deps` installs it)")
    try:
        pg = Postgres()
        pg.create(("feast", "mlflow"))
    except SystemExit as exc:
        require(False, f"a PostgreSQL that starts ({exc})")
    yield pg
    pg.remove()


def test_production_profile_on_postgres_and_redis(
    tiny: TinyProject, postgres: Postgres, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tiny.cfg.root
    sqlite_table = load_fm(tiny.fm.version).item_embeddings().detach().numpy()  # the project's own store
    before = os.environ.get("MLFLOW_TRACKING_URI")
    # the one switch, and the servers as `make services` prints them
    monkeypatch.setenv("SPECREC_PROFILE", "production")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres.url("mlflow"))
    monkeypatch.setenv("SPECREC_REDIS", redis_url)
    monkeypatch.setenv("SPECREC_FEAST_REGISTRY_URL", postgres.url("feast"))
    monkeypatch.setenv("SPECREC_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    try:
        cfg = dataclasses.replace(load_config(tiny.params), services=ServicesConfig())  # servers: the env
        assert cfg.production and yaml.safe_load(tiny.params.read_text())["profile"] == PROFILE
        assert use_project_store(cfg) == postgres.url("mlflow")
        client = mlflow.MlflowClient()
        # the tiny project's trained FM, logged and promoted into the PostgreSQL store as train_fm does
        with mlflow.start_run(experiment_id=experiment_id(root, EXPERIMENT)) as run:
            version = _log_model(tiny.cfg.path(tiny.cfg.paths.fm))
        # artifacts under the profile's artifact root, not MLflow's ./mlruns default of the working folder
        assert run.info.artifact_uri.startswith((tmp_path / "artifacts" / EXPERIMENT).as_uri())
        assert any((tmp_path / "artifacts" / EXPERIMENT).rglob("*.safetensors"))
        metric = tiny.cfg.fm.promote_metric
        assert promote_if_better(
            client, REGISTERED_MODEL, version, metric, tiny.fm.result.best_metrics[metric]
        ).promoted

        store = apply(cfg)
        assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
        assert str(store.config.registry.path).startswith("postgresql+psycopg://")
        parts = bundles.champion_parts(client) | {"codebook": "pg-test"}
        bundle = bundles.register(client, parts, experiment_id(root, "materialize"))
        assert bundle.fm_version == version
        as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
        result = materialize_items(cfg, as_of, bundle, store, client, progress=False)
        assert result.rows_written > 0

        got = store.get_online_features(
            features=["item_repr:embedding", "item_repr:item_idx"],
            entity_rows=[{"item_id": 1, "bundle_id": bundle.bundle_id}],
        ).to_dict()
        champion = load_fm(bundles.champion_parts(client)["fm"])  # from the PostgreSQL-backed registry
        table = champion.item_embeddings().detach().numpy()
        assert np.array_equal(table, sqlite_table)  # the same model as in the project's own store
        assert np.array_equal(np.asarray(got["embedding"][0], dtype=np.float32), table[got["item_idx"][0]])

        import psycopg  # the registry really is in PostgreSQL: a second, fresh connection sees the views

        dsn = f"host=127.0.0.1 port={postgres.port} user=specrec dbname=feast"
        with psycopg.connect(dsn) as conn:
            views = {row[0] for row in conn.execute("SELECT feature_view_name FROM feature_views")}
        assert {"item_repr", "item_stats", "user_state"} <= views
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        use_project_store(tiny.cfg)  # the next tests' store again
