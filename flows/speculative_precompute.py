"""Prefect flow `speculative_precompute(as_of, window)`: precompute FM pair representations for one window.

`as_of` is the window's start (only events before it are read); `window` its length (default
`speculation.window`). With `users` (`speculation.trigger: event`) it is the precompute those users'
events trigger instead: `as_of` is the end of the micro-batch that saw them, each likely-to-return user
gets a row with the history through as_of, within what the window holding as_of has left of its budget.
Rows go to the Feast `speculative` view of the serving bundle with expires_at = as_of + speculation.ttl.
A failing FM batch is retried inside the task; if it keeps failing the task fails before anything is
written, and Prefect's retry reruns the whole window.

With `dask.address` set (params.yaml) the FM pair representations are computed by `dask.shards` tasks on
prefect-dask's DaskTaskRunner (subflow `precompute_pair_shards`), each a run of whole FM batches retried
on its own; the window's rows are still written all at once by one last task, after every shard returned.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.config import Config, load_config
from specrec.errors import SpecrecError
from specrec.sharding import PairShard, merge_pairs, pair_shards, task_runner

if TYPE_CHECKING:
    from specrec.nearline.bundles import Bundle
    from specrec.speculation.pairs import PairResult
    from specrec.speculation.precompute import WindowPlan


RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 5],
    "retry_condition_fn": retry_unless_user_error,
}


def _logged(cfg: Config, as_of: str, result: dict[str, Any], shards: int | None = None) -> dict[str, Any]:
    """Log the window to MLflow `speculation` (kind precompute) and return it. An event micro-batch is not
    an MLflow run: at one per second of events it would bury the windows' runs (and mix other metric keys
    into their compare view); its rows are in the view's history, which the window runs account for and
    budget from, and its Prefect flow run keeps its result."""
    import mlflow
    from specrec.speculation.train import EXPERIMENT
    from specrec.tracking import experiment_id

    if result.get("trigger") == "event":
        return result
    tags = {"kind": "precompute", "as_of": result["as_of"], "bundle_id": result["bundle_id"]}
    tags["trigger"] = "window"
    if shards is not None:  # a tag, not a metric: every precompute run logs the same metric keys
        tags["dask_shards"] = str(shards)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=as_of):
        mlflow.set_tags(tags)
        mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, int | float)})
    return result


@task(**RETRY)
def precompute(params: str, as_of: str, window: str | None, users: list[int] | None = None) -> dict[str, Any]:
    """Predict, compute and write one window's (or one event micro-batch's) speculative rows; log them to
    MLflow `speculation`."""
    from specrec.nearline.store import open_store
    from specrec.speculation.precompute import precompute_events, precompute_window

    cfg, client = setup(params)
    store = open_store(cfg)
    if users is not None:
        return _logged(cfg, as_of, precompute_events(cfg, as_of, users, store, client))
    return _logged(cfg, as_of, precompute_window(cfg, as_of, store, client, window))


@task(**RETRY, cache_policy=NO_CACHE)
def plan_precompute(
    params: str, as_of: str, window: str | None, users: list[int] | None = None
) -> WindowPlan:
    """Predict the window (or the event micro-batch) and choose its users and items (no FM pair yet)."""
    from specrec.nearline.store import open_store
    from specrec.speculation.precompute import plan_events, plan_window

    cfg, client = setup(params)
    if users is not None:
        return plan_events(cfg, as_of, users, open_store(cfg), client)
    return plan_window(cfg, as_of, open_store(cfg), client, window)


@task(**RETRY, cache_policy=NO_CACHE)
def pair_shard(params: str, bundle: Bundle, shard: PairShard) -> PairResult:
    """The FM pair vectors of one shard's users (on a Dask worker); nothing is written here."""
    from specrec.speculation.precompute import compute_pairs

    cfg, client = setup(params)
    return compute_pairs(cfg, client, bundle, shard.histories, shard.candidates)


@flow(name="precompute_pair_shards", validate_parameters=False)  # numpy inside: built by plan_precompute
def precompute_pair_shards(params: str, plan: WindowPlan, shards: list[PairShard]) -> PairResult:
    """Submit every shard, wait for all of them, and merge their vectors; fail if any shard failed."""
    futures = [pair_shard.submit(params, plan.bundle, shard) for shard in shards]
    wait(futures)
    return merge_pairs(len(plan.users), shards, [f.result() for f in futures])


@task(**RETRY, cache_policy=NO_CACHE)
def write_precompute(
    params: str, as_of: str, plan: WindowPlan, pairs: PairResult | None, started: float, shards: int
) -> dict[str, Any]:
    """Write the window's rows at once (after every shard returned) and log the window."""
    from specrec.nearline.store import open_store
    from specrec.speculation.precompute import write_window

    cfg, _ = setup(params)
    return _logged(cfg, as_of, write_window(cfg, open_store(cfg), plan, pairs, started), shards)


def precompute_sharded(
    params: str, as_of: str, window: str | None, runner: Any, shards: int, users: list[int] | None = None
) -> dict[str, Any]:
    """Plan in-process, compute the pairs in shards on the Dask task runner, write once."""
    started = time.perf_counter()
    plan = plan_precompute(params, as_of, window, users)
    pairs, parts = None, []
    if plan.users:
        batch_users = load_config(Path(params)).speculation.batch_users
        parts = pair_shards(plan.histories, plan.candidates, batch_users, shards)
        pairs = precompute_pair_shards.with_options(task_runner=runner)(params, plan, parts)
    return write_precompute(params, as_of, plan, pairs, started, len(parts))


def parse_users(users: list[int] | str | int | None) -> list[int] | None:
    """The `users` parameter: a list of user ids, one id, or their text ("1,2,3" or "[1, 2, 3]", as an
    event trigger's template renders it); None for a window's precompute."""
    if users is None or isinstance(users, list):
        return users
    if isinstance(users, int):
        return [users]
    text = users.strip().strip("[]")
    try:
        return [int(u) for u in text.replace(",", " ").split()]
    except ValueError:
        raise SpecrecError(
            f"users = {users!r} is not a list of user ids; give integers such as 1,2,3 (none: a window)."
        ) from None


@flow(name="speculative_precompute")
def speculative_precompute(
    as_of: str,
    window: str | None = None,
    params: str = "params.yaml",
    users: list[int] | str | int | None = None,
) -> dict[str, Any]:
    """Precompute the window starting at as_of (or, with `users`, what those users' events trigger); a
    window with no predicted users writes nothing."""
    as_of = resolve_as_of(as_of, params)
    params = str(Path(params).resolve())
    ids = parse_users(users)
    dask = load_config(Path(params)).dask
    runner = task_runner(dask)
    if runner is None:
        result = precompute(params, as_of, window, ids)
    else:
        result = precompute_sharded(params, as_of, window, runner, dask.shards, ids)
    get_run_logger().info("speculative precompute at %s: %s", as_of, result["message"])
    return result
