"""What every flow shares: loading params once per task, the MLflow store, and the retry rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from specrec.config import Config, load_config
from specrec.errors import SpecrecError
from specrec.tracking import use_project_store


def setup(params: str) -> tuple[Config, MlflowClient]:
    """Load params.yaml and point MLflow at the project's store."""
    cfg = load_config(Path(params))
    use_project_store(cfg.root)
    return cfg, MlflowClient()


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (store or network errors), never bad input or configuration."""
    try:
        state.result()
    except SpecrecError:
        return False
    except Exception:  # noqa: BLE001 - everything else may be transient
        return True
    return False
