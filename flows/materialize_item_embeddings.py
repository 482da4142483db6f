"""Prefect flow `materialize_item_embeddings(as_of, bundle)`: write a bundle's item rows to Feast.

Thin: it resolves the bundle (the current champions by default), runs the nearline writer as a task
with retries on transient store errors, and logs rows, seconds and rows/s to MLflow `materialize`.

With `dask.address` set (params.yaml) the rows are written by `dask.shards` tasks on prefect-dask's
DaskTaskRunner (subflow `materialize_item_shards`): the plan is made once, each shard writes its contiguous
part of the items and is retried on its own, and only when every shard succeeded does one last task tag
the bundle complete, write its user states and move serving (the bundle stays invisible until then).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.config import load_config
from specrec.nearline import bundles
from specrec.nearline.materialize import (
    VIEW,
    ItemPlan,
    MaterializeResult,
    finish_items,
    log_run,
    materialize_items,
    plan_items,
    write_item_rows,
)
from specrec.sharding import task_runner


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


def _user_states(cfg: Any, as_of: str, store: Any, client: Any) -> Any:
    """The before_serving step: a new bundle's user states are written before it can serve (the scorer
    needs both)."""
    from specrec.nearline.user_state import update_user_state

    def user_states(b: bundles.Bundle) -> None:
        update_user_state(cfg, as_of, b, store, client)

    return user_states


def _logged(cfg: Any, result: MaterializeResult, shards: int | None = None) -> dict[str, Any]:
    """Log the write to MLflow `materialize` (once per view, as_of, bundle) and return it as a dict."""
    metrics = {
        "rows_written": result.rows_written,
        "seconds": result.seconds,
        "rows_per_s": result.rows_per_s,
        "items_known": result.items_known,
        "promoted": float(result.promoted),
    }
    tags = {"mode": result.mode, "flow": "materialize_item_embeddings"}
    if shards is not None:
        tags["dask_shards"] = str(shards)
    log_run(cfg, VIEW, result.as_of, result.bundle_id, metrics, tags)
    return asdict(result)


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def write_items(params: str, as_of: str, bundle: dict[str, Any]) -> dict[str, Any]:
    """Materialize the bundle's item rows known at as_of (complete or incremental)."""
    from specrec.nearline.store import open_store

    cfg, client = setup(params)
    store = open_store(cfg)
    result = materialize_items(
        cfg,
        as_of,
        bundles.Bundle(bundle["parts"], bundle["version"]),
        store,
        client,
        before_serving=_user_states(cfg, as_of, store, client),
    )
    return _logged(cfg, result)


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def plan_item_write(params: str, as_of: str, bundle: dict[str, Any]) -> ItemPlan:
    """Decide once what the sharded write does (mode, items), before any shard runs."""
    cfg, client = setup(params)
    return plan_items(cfg, as_of, bundles.Bundle(bundle["parts"], bundle["version"]), client)


@task(
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def write_item_shard(
    params: str, as_of: str, bundle: dict[str, Any], plan: ItemPlan, shard: int, shards: int
) -> int:
    """Write shard `shard` of `shards` of the plan's item rows (on a Dask worker); rows written."""
    from specrec.nearline.store import open_store

    cfg, client = setup(params)
    found = bundles.Bundle(bundle["parts"], bundle["version"])
    return write_item_rows(cfg, as_of, found, open_store(cfg), client, plan, (shard, shards), progress=False)


@flow(name="materialize_item_shards")
def materialize_item_shards(
    params: str, as_of: str, bundle: dict[str, Any], plan: ItemPlan, shards: int
) -> int:
    """Submit every shard, wait for all of them, and fail if any failed after its retries."""
    futures = [write_item_shard.submit(params, as_of, bundle, plan, k, shards) for k in range(shards)]
    wait(futures)  # every shard ends (done or failed) before anything is decided
    return sum(f.result() for f in futures)


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def finish_item_write(
    params: str, as_of: str, bundle: dict[str, Any], plan: ItemPlan, written: int, started: float, shards: int
) -> dict[str, Any]:
    """After every shard succeeded: tag the bundle complete, write its user states, move serving (runs in the
    flow's process: `started` is its time.perf_counter() when the write began)."""
    from specrec.nearline.store import open_store

    cfg, client = setup(params)
    found = bundles.Bundle(bundle["parts"], bundle["version"])
    before = _user_states(cfg, as_of, open_store(cfg), client)
    return _logged(cfg, finish_items(client, as_of, found, plan, written, started, before), shards)


def write_items_sharded(
    params: str, as_of: str, bundle: dict[str, Any], runner: Any, shards: int
) -> dict[str, Any]:
    """Plan, write the shards on the Dask task runner, then finish (the one step that serves the bundle)."""
    start = time.perf_counter()
    plan = plan_item_write(params, as_of, bundle)
    shards = min(shards, plan.rows)  # no empty shards
    written = 0
    if shards:
        sharded = materialize_item_shards.with_options(task_runner=runner)
        written = sharded(params, as_of, bundle, plan, shards)
    return finish_item_write(params, as_of, bundle, plan, written, start, shards)


@flow(name="materialize_item_embeddings")
def materialize_item_embeddings(
    as_of: str, bundle: str = "champion", params: str = "params.yaml"
) -> dict[str, Any]:
    """Write item representations of `bundle` known at `as_of`; serve the bundle once complete."""
    as_of = resolve_as_of(as_of, params)
    params = str(Path(params).resolve())
    resolved = resolve_bundle(params, bundle)
    dask = load_config(Path(params)).dask
    runner = task_runner(dask)
    if runner is None:
        result = write_items(params, as_of, resolved)
    else:
        result = write_items_sharded(params, as_of, resolved, runner, dask.shards)
    get_run_logger().info(
        "item_repr %s: %s rows (%s), serving moved: %s",
        result["bundle_id"],
        result["rows_written"],
        result["mode"],
        result["promoted"],
    )
    return result
