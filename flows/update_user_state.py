"""Prefect flow `update_user_state(as_of)`: incremental FM user encoding into Feast `user_state`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.nearline.materialize import log_run
from specrec.nearline.user_state import VIEW
from specrec.nearline.user_state import update_user_state as encode_and_write


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def write_user_state(params: str, as_of: str, bundle: str) -> dict[str, Any]:
    """Encode users with new events under the bundle ('serving' by default) and write their rows."""
    from specrec.clock import to_utc
    from specrec.errors import SpecrecError
    from specrec.nearline import bundles
    from specrec.nearline.store import open_store

    cfg, client = setup(params)
    target = bundles.serving(client) if bundle == "serving" else bundles.find(client, bundle)
    if target is None:
        raise SpecrecError(
            f"no bundle {bundle!r}: materialize items first (materialize_item_embeddings), "
            "which registers the bundle and makes it serving once complete."
        )
    metrics = encode_and_write(cfg, as_of, target, open_store(cfg), client)
    numbers = {k: float(v) for k, v in metrics.items() if k != "mode"}
    log_run(
        cfg,
        VIEW,
        to_utc(as_of).isoformat(),
        target.bundle_id,
        numbers,
        {"flow": "update_user_state", "mode": str(metrics["mode"])},
    )
    return metrics | {"bundle_id": target.bundle_id}


@flow(name="update_user_state")
def update_user_state(as_of: str, bundle: str = "serving", params: str = "params.yaml") -> dict[str, Any]:
    """Refresh user_state for users with new events known at as_of."""
    as_of = resolve_as_of(as_of, params)
    metrics = write_user_state(str(Path(params).resolve()), as_of, bundle)
    get_run_logger().info("user_state at %s: %d users (%s)", as_of, metrics["rows_written"], metrics["mode"])
    return metrics
