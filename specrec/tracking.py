"""Where MLflow runs and models live: the project's local store unless MLFLOW_TRACKING_URI says otherwise.

Nothing is set at import; entry points call `use_project_store(cfg)` once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specrec.config import Config

LOCAL_DB = Path("mlflow") / "mlflow.db"
LOCAL_ARTIFACTS = Path("mlflow") / "artifacts"


def local_uri(root: Path) -> str:
    """The project's own SQLite store under `root`/mlflow."""
    return f"sqlite:///{(root / LOCAL_DB).resolve()}"


ARTIFACT_ROOT_ENV = "SPECREC_ARTIFACT_ROOT"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri(root)


def artifact_location(root: Path, experiment: str) -> str | None:
    """A new experiment's artifact folder: <artifact root>/<name>, where the root is SPECREC_ARTIFACT_ROOT
    (the production profile's `services.artifact_root`, a folder or an object-store URL) or, on the
    project's own store, mlflow/artifacts; None (the server decides) for an MLflow server or another store."""
    uri = tracking_uri(root)  # (mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI)
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the server proxies artifacts (mlflow-artifacts:/) under its --artifacts-destination
    base = os.environ.get(ARTIFACT_ROOT_ENV)
    if base:
        if "://" in base:  # an object store (s3://...)
            return f"{base.rstrip('/')}/{experiment}"
        return (Path(base) / experiment).resolve().as_uri()
    if uri != local_uri(root):
        return None
    return (root / LOCAL_ARTIFACTS / experiment).resolve().as_uri()


def use_project_store(target: Config | Path) -> str:
    """Point the mlflow client at the project's store and return its URI: for a Config on the production
    profile, its `services` MLflow (PostgreSQL or a server) with its artifact root; otherwise
    MLFLOW_TRACKING_URI if set, else the project's SQLite store under <root>/mlflow."""
    import mlflow
    from specrec.config import Config

    if isinstance(target, Config) and target.production:
        from specrec.services import check_postgres, endpoints

        found = endpoints(target)
        uri = found.mlflow_tracking_uri
        check_postgres("MLflow tracking", "mlflow_tracking_uri", uri)
        os.environ[ARTIFACT_ROOT_ENV] = found.artifact_root
    else:
        root = target.root if isinstance(target, Config) else target
        (root / LOCAL_DB).parent.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(root)
        os.environ.pop(ARTIFACT_ROOT_ENV, None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(root: Path, name: str) -> str:
    """The id of experiment `name`, created with the project's artifact location when missing."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(mlflow.create_experiment(name, artifact_location=artifact_location(root, name)))
