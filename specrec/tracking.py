"""Where MLflow runs and models live: the project's local store unless MLFLOW_TRACKING_URI says otherwise.

Nothing is set at import; entry points call `use_project_store(root)` once.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_DB = Path("mlflow") / "mlflow.db"
LOCAL_ARTIFACTS = Path("mlflow") / "artifacts"


def local_uri(root: Path) -> str:
    """The project's own SQLite store under `root`/mlflow."""
    return f"sqlite:///{(root / LOCAL_DB).resolve()}"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri(root)


def artifact_location(root: Path, experiment: str) -> str | None:
    """A new experiment's artifact folder: mlflow/artifacts/<name> locally, else the server's default."""
    if tracking_uri(root) != local_uri(root):  # (mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI)
        return None
    return (root / LOCAL_ARTIFACTS / experiment).resolve().as_uri()


def use_project_store(root: Path) -> str:
    """Point the mlflow client at the project's store; return the URI."""
    import mlflow

    (root / LOCAL_DB).parent.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(root)
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
