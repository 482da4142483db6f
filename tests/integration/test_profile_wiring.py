"""The suite really runs on the profile it was asked for: `make test` runs the integration tests twice, on
the embedded profile and with SPECREC_PROFILE=production, and this test checks which stores were used."""

from __future__ import annotations

import pytest

import mlflow
from specrec.nearline.store import open_store
from tests.conftest import PROFILE
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration]


def test_projects_use_the_stores_of_the_suites_profile(tiny: TinyProject) -> None:
    cfg = tiny.cfg
    assert cfg.profile == PROFILE
    store = open_store(cfg)
    uri = mlflow.get_tracking_uri()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs, "the tiny project's FM training logged nothing to the store"
    if PROFILE == "production":
        assert uri.startswith("postgresql+psycopg://") and uri == cfg.services.mlflow_tracking_uri
        assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
        assert str(cfg.services.redis).split(",db=")[1].isdigit()  # a Redis database of the project's own
        artifacts = (cfg.root / "mlflow" / "artifacts").as_uri()
        assert all(r.info.artifact_uri.startswith(artifacts) for r in runs)
    else:
        assert uri == f"sqlite:///{(cfg.root / 'mlflow' / 'mlflow.db').resolve()}"
        assert store.config.online_store.type == "sqlite"
