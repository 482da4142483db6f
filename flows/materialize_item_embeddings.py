"""Prefect flow `materialize_item_embeddings(as_of, bundle)`: write a bundle's item rows to Feast.

Thin: it resolves the bundle (the current champions by default), runs the nearline writer as a task
with retries on transient store errors, and logs rows, seconds and rows/s to MLflow `materialize`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.nearline import bundles
from specrec.nearline.materialize import VIEW, log_run, materialize_items


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def resolve_bundle(params: str, bundle: str) -> dict[str, Any]:
    """The bundle to write: 'champion' registers (or finds) the bundle of the current champions."""
    cfg, client = setup(params)
    found: bundles.Bundle | None
    if bundle == "champion":
        from specrec.tracking import experiment_id

        found = bundles.register(
            client, bundles.champion_parts(client), experiment_id(cfg.root, "materialize")
        )
    else:
        found = bundles.find(client, bundle)
        if found is None:
            from specrec.errors import SpecrecError

            raise SpecrecError(
                f"bundle {bundle!r} is not registered in specrec-bundle; use 'champion' or an id "
                "from `specrec bundle list`."
            )
    return {"parts": found.parts, "version": found.version}


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def write_items(params: str, as_of: str, bundle: dict[str, Any]) -> dict[str, Any]:
    """Materialize the bundle's item rows known at as_of (complete or incremental)."""
    from specrec.nearline.store import open_store
    from specrec.nearline.user_state import update_user_state

    cfg, client = setup(params)
    store = open_store(cfg)

    def user_states(b: bundles.Bundle) -> None:
        """A new bundle's user states are written before it can serve (the scorer needs both)."""
        update_user_state(cfg, as_of, b, store, client)

    result = materialize_items(
        cfg,
        as_of,
        bundles.Bundle(bundle["parts"], bundle["version"]),
        store,
        client,
        before_serving=user_states,
    )
    metrics = {
        "rows_written": result.rows_written,
        "seconds": result.seconds,
        "rows_per_s": result.rows_per_s,
        "items_known": result.items_known,
        "promoted": float(result.promoted),
    }
    log_run(
        cfg,
        VIEW,
        result.as_of,
        result.bundle_id,
        metrics,
        {"mode": result.mode, "flow": "materialize_item_embeddings"},
    )
    return asdict(result)


@flow(name="materialize_item_embeddings")
def materialize_item_embeddings(
    as_of: str, bundle: str = "champion", params: str = "params.yaml"
) -> dict[str, Any]:
    """Write item representations of `bundle` known at `as_of`; serve the bundle once complete."""
    as_of = resolve_as_of(as_of, params)
    params = str(Path(params).resolve())
    resolved = resolve_bundle(params, bundle)
    result = write_items(params, as_of, resolved)
    get_run_logger().info(
        "item_repr %s: %s rows (%s), serving moved: %s",
        result["bundle_id"],
        result["rows_written"],
        result["mode"],
        result["promoted"],
    )
    return result
