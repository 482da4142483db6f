"""Prefect flow `update_item_stats(as_of)`: windowed item counts, trend and rating into Feast `item_stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.nearline.item_stats import VIEW
from specrec.nearline.item_stats import update_item_stats as compute_and_write
from specrec.nearline.materialize import log_run


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def write_item_stats(params: str, as_of: str) -> dict[str, Any]:
    """Compute item_stats at as_of, write them, log the write to MLflow `materialize`."""
    from specrec.clock import to_utc
    from specrec.nearline.store import open_store

    cfg, _ = setup(params)
    metrics = compute_and_write(cfg, as_of, open_store(cfg))
    log_run(cfg, VIEW, to_utc(as_of).isoformat(), "-", metrics, {"flow": "update_item_stats"})
    return metrics


@flow(name="update_item_stats")
def update_item_stats(as_of: str, params: str = "params.yaml") -> dict[str, Any]:
    """Refresh item_stats from the events known at as_of."""
    as_of = resolve_as_of(as_of, params)
    metrics = write_item_stats(str(Path(params).resolve()), as_of)
    get_run_logger().info("item_stats at %s: %d rows", as_of, metrics["rows_written"])
    return metrics
