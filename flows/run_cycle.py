"""Prefect flow `run_cycle(as_of)`: one day of operation, every flow in dependency order, once per as_of.

1. admit the cycle's events (specrec.replay.cycle.ingest_cycle: the slice [as_of - cadence, as_of) of the
   validated events, counted; see that module for what "ingest" means here)
2. daily_lora_finetune  -> specrec-fm-adapter@champion (gated; ADWIN may retrain the base)
3. codebook_refresh     -> semantic IDs of new items (skipped, with the reason, without a codebook champion)
4. retrain_speculator   -> specrec-speculator@champion
5. materialize_item_embeddings(bundle=champion) -> the bundle of the champions, complete, then serving;
   update_item_stats and update_user_state: the subflows `specrec nearline run --as-of` runs
6. speculative_precompute -> the first window after as_of, for the serving bundle

Each step is a subflow, run again once after a failure that is not a SpecrecError (its tasks retry
transient errors themselves), with the MLflow check repeated first. Idempotent per as_of:
a step whose finished MLflow run tagged with the as_of exists is not run again (no second registered
version), the nearline steps are idempotent by construction (same parts -> same bundle, a write already
done is a no-op, one MLflow run per write), and a complete cycle returns what its `cycle` run recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.codebook_refresh import codebook_refresh
from flows.common import retry_unless_user_error, setup
from flows.daily_lora_finetune import daily_lora_finetune
from flows.materialize_item_embeddings import materialize_item_embeddings
from flows.retrain_speculator import retrain_speculator
from flows.speculative_precompute import speculative_precompute
from flows.update_item_stats import update_item_stats
from flows.update_user_state import update_user_state
from specrec.clock import to_utc
from specrec.errors import SpecrecError

# A failed step's subflow is run again (a new subflow run) after the delay, once the MLflow check has
# been repeated: a Prefect flow-level retry would rerun a step that registered its version before failing
# (e.g. adapter registered, drift check failed) and register a second one. Tasks inside retry on their own.
RETRIES, RETRY_DELAY_S = 1, 10


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def admit_events(params: str, as_of: str) -> dict[str, Any]:
    """Check and count the cycle's events (the slice of the validated events before as_of)."""
    from specrec.replay.cycle import ingest_cycle

    cfg, _ = setup(params)
    return ingest_cycle(cfg, as_of)


@task
def earlier_cycle(params: str, as_of: str) -> dict[str, Any] | None:
    """What a complete earlier run of this cycle recorded, if any."""
    from specrec.replay.cycle import recorded

    cfg, _ = setup(params)
    return recorded(cfg, as_of)


@task
def done_before(params: str, experiment: str, as_of: str, tags: dict[str, str]) -> str | None:
    """The id of a finished run of `experiment` tagged with this as_of (the step already ran), or None."""
    from specrec.replay.cycle import done_run

    cfg, _ = setup(params)
    run = done_run(cfg, experiment, as_of, **tags)
    return run.info.run_id if run else None


@task
def has_codebook(params: str) -> bool:
    """Whether specrec-codebook@champion exists (the initial codebook is a `dvc repro` stage)."""
    from specrec.codebook import versions

    _, client = setup(params)
    return versions.champion_version(client) is not None


@task
def record_cycle(params: str, result: dict[str, Any]) -> str:
    """Log the complete cycle to MLflow `cycle` (the marker a rerun finds)."""
    from specrec.replay.cycle import record

    cfg, _ = setup(params)
    return record(cfg, result)


class _Steps:
    """Run steps in order, each at most once per as_of, timing them and keeping a one-line outcome."""

    def __init__(self, params: str, as_of: str) -> None:
        self.params, self.as_of = params, as_of
        self.outcome: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def run(
        self,
        name: str,
        call: Callable[[], dict[str, Any]],
        say: Callable[[dict[str, Any]], str],
        once_in: tuple[str, dict[str, str]] | None = None,
    ) -> dict[str, Any] | None:
        """Run `call` unless `once_in` = (experiment, tags) names a finished run of this as_of; retried."""
        start, logger = time.perf_counter(), get_run_logger()
        for attempt in range(RETRIES + 1):
            done = done_before(self.params, once_in[0], self.as_of, once_in[1]) if once_in else None
            if done:
                out, self.outcome[name] = None, f"done before (run {done})"
                break
            try:
                out = call()
            except SpecrecError:
                raise  # bad input or configuration: another attempt would fail the same way
            except Exception as exc:  # noqa: BLE001 - anything else may be transient
                if attempt == RETRIES:
                    raise
                wait = RETRY_DELAY_S
                logger.warning("cycle %s, %s failed (%s); again in %s s", self.as_of, name, exc, wait)
                time.sleep(wait)
                continue
            self.outcome[name] = say(out)
            break
        self.seconds[name] = time.perf_counter() - start
        logger.info("cycle %s, %s: %s", self.as_of, name, self.outcome[name])
        return out


@flow(name="run_cycle")
def run_cycle(as_of: str, params: str = "params.yaml") -> dict[str, Any]:
    """Run the daily cycle at as_of (ISO instant); a rerun of a complete cycle changes nothing."""
    p, when = str(Path(params).resolve()), to_utc(as_of).isoformat()
    earlier = earlier_cycle(p, when)
    if earlier is not None:
        get_run_logger().info("cycle %s is complete (run %s): nothing to do", when, earlier["run_id"])
        return earlier
    steps = _Steps(p, when)
    ingest = steps.run(
        "ingest",
        lambda: admit_events(p, when),
        lambda r: f"{r['events']} events, {r['users']} users ({r['new_users']} new), "
        f"{r['new_items']} new items, {r['quarantined']} quarantined",
    )
    assert ingest is not None
    steps.run(
        "lora",
        lambda: daily_lora_finetune(as_of=when, params=p),
        lambda r: f"{r['cycle']['status']} adapter v{r['cycle']['adapter_version']} ({r['cycle']['reason']})",
        ("lora-finetune", {}),
    )
    if has_codebook(p):
        steps.run(
            "codebook",
            lambda: codebook_refresh(as_of=when, params=p, write_feast=False),
            lambda r: f"v{r['version']}, {r['new_items']} new items coded, retrained {r['retrained']}",
            ("codebook-refresh", {"stage": "refresh"}),
        )
    else:
        steps.outcome["codebook"] = "skipped: no specrec-codebook@champion (`dvc repro codebook`)"
    steps.run(
        "speculator",
        lambda: retrain_speculator(as_of=when, params=p),
        lambda r: f"v{r['version']} promoted={r['promoted']} coverage {r['coverage']:.3f}",
        ("speculation", {"kind": "retrain"}),
    )
    items = steps.run(
        "item_repr",
        lambda: materialize_item_embeddings(as_of=when, params=p),
        lambda r: f"bundle {r['bundle_id']} v{r['bundle_version']}: {r['rows_written']} rows ({r['mode']})",
    )
    assert items is not None
    steps.run(
        "item_stats",
        lambda: update_item_stats(as_of=when, params=p),
        lambda r: f"{int(r['rows_written'])} rows",
    )
    steps.run(
        "user_state",
        lambda: update_user_state(as_of=when, params=p),
        lambda r: f"{r['rows_written']} rows ({r['mode']}, bundle {r['bundle_id']})",
    )
    steps.run(
        "precompute",
        lambda: speculative_precompute(as_of=when, params=p),
        lambda r: str(r["message"]),
        ("speculation", {"kind": "precompute"}),
    )
    result = {
        "as_of": when,
        "bundle_id": items["bundle_id"],
        "bundle_version": items["bundle_version"],
        "steps": steps.outcome,
        "seconds": steps.seconds,
        "ingest": ingest,
        "reused": False,
    }
    result["run_id"] = record_cycle(p, result)
    return result
