"""What every flow shares: loading params once per task, the MLflow store, the retry rule, and `as_of`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import runtime

from mlflow import MlflowClient
from specrec.config import Config, load_config
from specrec.errors import SpecrecError, StoreUnreachable
from specrec.tracking import use_project_store


def setup(params: str) -> tuple[Config, MlflowClient]:
    """Load params.yaml and point MLflow at the project's store."""
    cfg = load_config(Path(params))
    use_project_store(cfg)
    return cfg, MlflowClient()


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (store or network errors, a store server down), never bad input or
    configuration."""
    try:
        state.result()
    except StoreUnreachable:  # a store server down (or restarting): worth another try
        return True
    except SpecrecError:
        return False
    except Exception:  # noqa: BLE001 - everything else may be transient
        return True
    return False


AS_OF_WORDS = ("scheduled", "first")


def resolve_as_of(as_of: str, params: str) -> str:
    """The flow run's as_of: 'scheduled' = this run's scheduled start (UTC, whole seconds), 'first' = the
    clock's first cycle; anything else is passed through unchanged (an ISO date or date-time).

    A deployment on a cron schedule passes as_of="scheduled", so the scheduler feeds real dates while the
    replay and a backfill pass explicit (simulated or older) ones; see specrec/clock.py.
    """
    if as_of == "scheduled":
        import pandas as pd

        if runtime.flow_run.id is None:
            raise SpecrecError(
                "as_of 'scheduled' means the scheduled start of the flow run, and there is no flow run here: "
                "pass an ISO date or date-time (or 'first')."
            )
        when = pd.Timestamp(runtime.flow_run.scheduled_start_time)
        when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
        return when.floor("s").isoformat()
    if as_of == "first":
        from specrec.clock import ReplayClock

        return ReplayClock.from_config(load_config(Path(params)).clock).cycle(1).as_of.isoformat()
    return as_of


PROMOTED_EVENT = "specrec.champion.promoted"


def announce_promotion(model: str, version: object, as_of: str) -> None:
    """Emit a Prefect event: a model the serving bundle names has a new champion at as_of.

    The deployment materialize_item_embeddings has a trigger on this event (flows/deploy.py), so a served
    platform writes the new bundle right after a promotion instead of at the next 15-minute run.
    """
    from prefect.events import emit_event

    emit_event(
        PROMOTED_EVENT,
        resource={"prefect.resource.id": f"specrec.model.{model}", "prefect.resource.name": model},
        payload={"as_of": as_of, "model": model, "version": str(version)},
    )


EVENTS_RECEIVED = "specrec.events.received"


def announce_events(as_of: str, users: list[int]) -> None:
    """Emit a Prefect event: a micro-batch of interaction events ending at as_of came from these users.

    With `speculation.trigger: event` the deployment speculative_precompute has a trigger on this event
    (flows/deploy.py) and runs the users' event-triggered precompute; whatever admits events (a stream
    consumer) calls this once per micro-batch (a second of events).
    """
    from prefect.events import emit_event

    emit_event(
        EVENTS_RECEIVED,
        resource={"prefect.resource.id": "specrec.events", "prefect.resource.name": "interaction events"},
        payload={"as_of": as_of, "users": ",".join(str(int(u)) for u in users)},
    )
