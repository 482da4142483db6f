"""One daily cycle at `as_of`: admit the cycle's events, and know which steps already ran for it.

"Ingesting the cycle's events" here: the pipeline's `ingest` stage validated and quarantined the whole
source once (`dvc repro`), and every consumer reads events through a log cut at its as_of, so a cycle
does not copy data. What the cycle does is admit its slice, the events in [as_of - cadence, as_of):
check that each is a prepared, id-mapped event of the window, and record what arrived (events, users,
new users, new items, rows quarantined in the window) on the cycle's MLflow run (experiment `cycle`).

Idempotence per as_of lives in MLflow: every step that registers something logs a run tagged with the
as_of (`lora-finetune`, `codebook-refresh`, `speculation`), and `run_cycle` skips a step whose finished
run exists; the cycle's own run (tag `complete`) records the bundle, so a rerun returns it unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from specrec.clock import Cycle, EventLog, ReplayClock, to_utc
from specrec.config import Config
from specrec.data.validate import parse_times
from specrec.errors import DataError, SpecrecError
from specrec.io import read_parquet
from specrec.tracking import experiment_id

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

EXPERIMENT = "cycle"


def resolve_as_of(cfg: Config, value: str) -> str:
    """`first`, a cycle number N, or an ISO instant -> the as_of (ISO, UTC)."""
    clock = ReplayClock.from_config(cfg.clock)
    if value == "first":
        return clock.cycle(1).as_of.isoformat()
    if value.isdigit():
        return clock.cycle(int(value)).as_of.isoformat()
    return to_utc(value).isoformat()


def cycle_of(cfg: Config, as_of: object) -> Cycle:
    """The cycle ending at as_of (the clock's index on a boundary, 0 off its grid); as the LoRA cycle."""
    from specrec.lora.finetune import cycle_at

    return cycle_at(cfg, as_of)


def check_cycles(cfg: Config, n: int) -> list[Cycle]:
    """The first n cycles for the replay; each needs the following cadence of events inside the clock."""
    clock = ReplayClock.from_config(cfg.clock)
    if not 1 <= n <= clock.n_cycles - 1:
        raise SpecrecError(
            f"--cycles {n}: the replay serves the cadence after each cycle's as_of, so this clock "
            f"(clock.cycles = {clock.n_cycles}) allows 1..{clock.n_cycles - 1}; pass a number in that range."
        )
    return clock.cycles()[:n]


def _timestamp_unit(cfg: Config) -> str | None:
    """The unit raw timestamps of the configured source are in (None: synthetic times, none quarantined)."""
    if cfg.data.source.startswith("movielens"):
        return "s"
    return cfg.data.table.timestamp_unit if cfg.data.source == "table" else None


def quarantined_in(cfg: Config, cycle: Cycle) -> int:
    """Quarantined interaction rows whose raw timestamp falls in the cycle's window."""
    path = cfg.path(cfg.paths.quarantine) / "interactions.parquet"
    unit = _timestamp_unit(cfg)
    if unit is None or not path.exists():
        return 0
    ts = parse_times(pd.read_parquet(path)["timestamp"], unit)
    return int(((ts >= cycle.start) & (ts < cycle.as_of)).sum())


def ingest_cycle(cfg: Config, as_of: object) -> dict[str, Any]:
    """Admit the cycle's events (those in [as_of - cadence, as_of)) and count what arrived."""
    cycle = cycle_of(cfg, as_of)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    log_ = EventLog(events).as_of(cycle.as_of)  # nothing at or after as_of is even held
    new, before = log_.of_cycle(cycle), log_.known_at(cycle.start)
    bad = new["item_idx"].isna() | new["user_idx"].isna() | (new["item_idx"] < 1)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} events of the cycle ending {cycle.name} have no item/user index "
            f"(event_id {new.loc[bad, 'event_id'].head(10).tolist()}); rerun `dvc repro prepare`."
        )
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    first = items["first_seen"]
    return {
        "as_of": cycle.as_of.isoformat(),
        "cycle": cycle.index,
        "window_start": cycle.start.isoformat(),
        "events": len(new),
        "users": int(new["user_id"].nunique()),
        "new_users": len(set(new["user_id"]) - set(before["user_id"])),
        "items": int(new["item_id"].nunique()),
        "new_items": int(((first >= cycle.start) & (first < cycle.as_of)).sum()),
        "known_events": len(log_),
        "quarantined": quarantined_in(cfg, cycle),
    }


def done_run(cfg: Config, experiment: str, as_of: str, **tags: str) -> Run | None:
    """The newest finished run of `experiment` tagged with this as_of (and `tags`), if any."""
    import mlflow

    query = " and ".join(
        [f"tags.as_of = '{as_of}'", "attributes.status = 'FINISHED'"]
        + [f"tags.{k} = '{v}'" for k, v in tags.items()]
    )
    found = mlflow.search_runs(
        [experiment_id(cfg.root, experiment)],
        query,
        output_format="list",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def recorded(cfg: Config, as_of: str) -> dict[str, Any] | None:
    """What a complete earlier run of this cycle recorded (bundle, steps), or None."""
    run = done_run(cfg, EXPERIMENT, as_of, complete="true")
    if run is None:
        return None
    return {
        "as_of": as_of,
        "bundle_id": run.data.tags.get("bundle_id", ""),
        "bundle_version": run.data.tags.get("bundle_version", ""),
        "run_id": run.info.run_id,
        "steps": {k[len("step.") :]: v for k, v in run.data.tags.items() if k.startswith("step.")},
        "ingest": {k: v for k, v in run.data.metrics.items() if not k.startswith("seconds_")},
        "reused": True,
    }


def record(cfg: Config, result: dict[str, Any]) -> str:
    """Log the cycle: one run in `cycle` named by the cycle, ingest counts, step outcomes, the bundle."""
    import mlflow

    cycle = cycle_of(cfg, result["as_of"])
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=cycle.name) as run:
        mlflow.set_tags(
            {
                "as_of": result["as_of"],
                "bundle_id": result["bundle_id"],
                "bundle_version": result["bundle_version"],
                "complete": "true",
                **{f"step.{k}": v for k, v in result["steps"].items()},
            }
        )
        ingest = {k: float(v) for k, v in result["ingest"].items() if isinstance(v, int | float)}
        mlflow.log_metrics(ingest | {f"seconds_{k}": v for k, v in result["seconds"].items()})
    return str(run.info.run_id)
