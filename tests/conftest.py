"""Shared fixtures: the repo root, the shared benchmark data, and a project config in a temp folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from specrec.config import Config, PathsConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def require(condition: bool, what: str) -> None:
    """Skip locally when a prerequisite is missing; in CI (CI=true) fail instead, saying what is missing."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing in CI; the test cannot run without it.")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repo (benchmark files that are never committed)."""
    require(SHARED_DATA.is_dir(), f"shared data folder {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def project_cfg(tmp_path: Path) -> Config:
    """The repo's params.yaml with every output path moved under a temp folder."""
    cfg = load_config(ROOT / "params.yaml")
    paths = PathsConfig(**{f.name: str(tmp_path / f.name) for f in dataclasses.fields(PathsConfig)})
    return dataclasses.replace(cfg, paths=paths)


# what use_project_store and open_store set in the process environment
MLFLOW_URI_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "SPECREC_ARTIFACT_ROOT",
    "SPECREC_REDIS",
    "SPECREC_FEAST_REGISTRY_URL",
)


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put the MLflow URI variables back as they were (unset ones unset again)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_mlflow_uri() -> object:
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI; keep one test's store out of the next."""
    saved = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    yield
    _restore_env(saved)


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_uri_per_module() -> object:
    """The same for module- and session-scoped fixtures (a project built once per module points MLflow at
    its store): specrec.tracking honours an inherited MLFLOW_TRACKING_URI, so a leaked one would send every
    later module's project to this module's store."""
    saved = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    yield
    _restore_env(saved)
