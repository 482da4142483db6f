"""Prefect flow `speculative_precompute(as_of, window)`: precompute FM pair representations for one window.

`as_of` is the window's start (only events before it are read); `window` its length (default
`speculation.window`). Rows go to the Feast `speculative` view of the serving bundle with expires_at =
as_of + speculation.ttl. A failing FM batch is retried inside the task; if it keeps failing the task
fails before anything is written, and Prefect's retry reruns the whole window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup


@task(retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_unless_user_error)
def precompute(params: str, as_of: str, window: str | None) -> dict[str, Any]:
    """Predict, compute and write one window's speculative rows; log the window to MLflow `speculation`."""
    import mlflow
    from specrec.nearline.store import open_store
    from specrec.speculation.precompute import precompute_window
    from specrec.speculation.train import EXPERIMENT
    from specrec.tracking import experiment_id

    cfg, client = setup(params)
    result = precompute_window(cfg, as_of, open_store(cfg), client, window)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=as_of):
        mlflow.set_tags({"kind": "precompute", "as_of": result["as_of"], "bundle_id": result["bundle_id"]})
        mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, int | float)})
    return result


@flow(name="speculative_precompute")
def speculative_precompute(
    as_of: str, window: str | None = None, params: str = "params.yaml"
) -> dict[str, Any]:
    """Precompute the window starting at as_of; a window with no predicted users writes nothing."""
    as_of = resolve_as_of(as_of, params)
    result = precompute(str(Path(params).resolve()), as_of, window)
    get_run_logger().info("speculative precompute at %s: %s", as_of, result["message"])
    return result
