"""Every flow as a Prefect deployment, all served by one process: `python -m flows.deploy` (`make flows`).

DEPLOYMENTS below is the one table of what runs when: flow, cron schedule (in TIMEZONE), extra
parameters, tags, flow-level retries and the promotion trigger. Scheduled runs pass as_of="scheduled",
which each flow resolves to its run's scheduled start in UTC (flows.common.resolve_as_of): the scheduler
feeds real dates, the replay and backfills call the same flows with explicit ones.

The schedule lives here rather than in params.yaml: a schedule decides *when* a flow runs, never what it
computes (that is the as_of parameter), and an operator changing it wants the whole deployment (cron,
tags, retries, trigger) in one reviewed row, where Prefect users look for it (prefect.yaml or deploy.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from flows.common import EVENTS_RECEIVED, PROMOTED_EVENT
from specrec.errors import SpecrecError

# Every cron below is read in this IANA zone; change it to run the daily jobs at night local time (as_of
# stays UTC either way).
TIMEZONE = "UTC"
# A deployment is named <flow>/<tier>, the tier of the freshness hierarchy it serves (docs/architecture.md):
TIERS = ("daily", "nearline", "on-demand")
RETRY_DELAY_S = 60
# Interval schedules (`every`) are anchored here, so 30-second runs fall on :00 and :30 of each minute.
INTERVAL_ANCHOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# These run once per speculation.window: precompute covers one window per run, and the replay's requests
# read the user state of their window's start (speculation.request_state: window).
PER_WINDOW = ("speculative_precompute", "update_user_state")


@dataclass(frozen=True)
class Deployment:
    """One row: a flow in flows/<flow>.py (function of the same name) and how it is deployed."""

    flow: str
    tier: str  # one of TIERS; also a tag
    cron: str | None  # None (and no `every`): no schedule, runs when triggered (UI, `prefect deployment
    # run`, automation)
    tags: tuple[str, ...]
    # Flow-level retries, only where a re-run at the same as_of is idempotent (nearline writes). Training
    # flows get none: a re-run registers another model version; their tasks already retry transient errors.
    retries: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)  # beyond as_of and params
    scheduled_as_of: bool = True  # as_of="scheduled" by default; False: the trigger must give an as_of
    on_promotion: bool = False  # also run on every PROMOTED_EVENT, with the promotion's as_of
    every: str | None = None  # instead of cron, a fixed interval such as "30s" (cron cannot go below 1 min)
    # also run on every EVENTS_RECEIVED (a micro-batch of interaction events) with its as_of and users, when
    # params.yaml has speculation.trigger: event
    on_events: bool = False

    @property
    def name(self) -> str:
        """The deployment's full name, as `prefect deployment run` takes it."""
        return f"{self.flow}/{self.tier}"

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise SpecrecError(f"deployment {self.flow}: tier {self.tier!r} is not one of {TIERS}.")
        if self.cron is not None and self.every is not None:
            raise SpecrecError(
                f"deployment {self.flow}: give cron ({self.cron!r}) or every ({self.every!r}), not both."
            )
        if self.cron is not None:
            CronSchedule(cron=self.cron, timezone=TIMEZONE)  # rejects a bad cron or zone, naming it
        if self.every is not None:
            from specrec.config import parse_duration

            parse_duration(f"deployment {self.flow}: every", self.every)  # a positive duration, or says so

    @property
    def period(self) -> dt.timedelta | None:
        """The time between two scheduled runs; None when the row is triggered only."""
        import pandas as pd

        if self.every is not None:
            return pd.Timedelta(self.every).to_pytimedelta()
        return cron_period(self.cron) if self.cron else None

    def schedules(self) -> list[CronSchedule | IntervalSchedule] | None:
        """The Prefect schedule of the row (None: triggered only)."""
        if self.cron:
            return [CronSchedule(cron=self.cron, timezone=TIMEZONE)]
        if self.every and self.period:
            return [IntervalSchedule(interval=self.period, anchor_date=INTERVAL_ANCHOR, timezone=TIMEZONE)]
        return None


DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("daily_lora_finetune", "daily", "0 2 * * *", ("training", "lora")),
    Deployment("codebook_refresh", "daily", "0 3 * * *", ("codebook",)),
    Deployment("retrain_speculator", "daily", "0 4 * * *", ("training", "speculation")),
    Deployment(
        "materialize_item_embeddings",
        "nearline",
        "*/15 * * * *",
        ("feast",),
        retries=1,
        parameters={"bundle": "champion"},
        on_promotion=True,
    ),
    Deployment("update_user_state", "nearline", "*/5 * * * *", ("feast",), retries=1),
    Deployment("update_item_stats", "nearline", "*/5 * * * *", ("feast",), retries=1),
    Deployment(
        "speculative_precompute", "nearline", "*/5 * * * *", ("speculation",), retries=1, on_events=True
    ),
    Deployment("train_scorer", "on-demand", None, ("training", "scorer")),
    Deployment("retrain_base", "on-demand", None, ("training", "fm"), parameters={"trigger": "manual"}),
    # run_cycle takes an explicit ISO as_of (a replay or backfill day), so its runs ask for one.
    Deployment("run_cycle", "on-demand", None, ("cycle",), scheduled_as_of=False),
)


def cron_period(cron: str) -> dt.timedelta:
    """The time between two consecutive firings of `cron` (for a regular schedule such as */5)."""
    from prefect._vendor.croniter import croniter  # the parser Prefect validates cron strings with

    it = croniter(cron, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    first = it.get_next(dt.datetime)
    return it.get_next(dt.datetime) - first


def check_precompute_cadence(rows: tuple[Deployment, ...], window: str) -> None:
    """speculative_precompute covers one speculation.window per run and the user state is read as of a
    window's start: both must run once per window."""
    import pandas as pd

    for row in rows:
        if row.flow in PER_WINDOW and row.period is not None and row.period != pd.Timedelta(window):
            when = f"cron {row.cron!r}" if row.cron else f"every={row.every!r}"
            raise SpecrecError(
                f"{row.flow} runs on {when} (every {row.period}) but speculation.window is {window}: "
                f"{' and '.join(PER_WINDOW)} must run once per window; make them equal (flows/deploy.py "
                "DEPLOYMENTS: a cron such as */5 * * * *, or every='30s' below a minute; or params.yaml "
                "speculation.window)."
            )


def served_flow(row: Deployment) -> Any:
    """The flow of a row as its deployment runs it: with the row's flow-level retries."""
    flow = getattr(importlib.import_module(f"flows.{row.flow}"), row.flow)
    return flow.with_options(retries=row.retries, retry_delay_seconds=RETRY_DELAY_S) if row.retries else flow


def __getattr__(name: str) -> Any:
    """`flows.deploy.<flow>` is the served flow: the deployments' entrypoint, so a run loaded from it in
    serve's subprocess gets the row's retries (the flow in flows/<flow>.py has none of its own)."""
    row = next((r for r in DEPLOYMENTS if r.flow == name), None)
    if row is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return served_flow(row)


def to_deployment(row: Deployment, params: Path, events: bool = False) -> Any:
    """The RunnerDeployment of one row, with parameters that point at `params`; `events`: event-triggered
    precompute is on (speculation.trigger: event), so an on_events row gets its trigger."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    flow = served_flow(row)
    parameters = {"params": str(params)} | row.parameters
    if row.scheduled_as_of:
        parameters["as_of"] = "scheduled"
    triggers = []
    if row.on_promotion:
        triggers.append(
            DeploymentEventTrigger(
                name=f"{row.flow} after a promotion",
                expect={PROMOTED_EVENT},
                match={"prefect.resource.id": "specrec.model.*"},
                parameters=parameters | {"as_of": "{{ event.payload.as_of }}"},
            )
        )
    if row.on_events and events:
        triggers.append(
            DeploymentEventTrigger(
                name=f"{row.flow} after interaction events",
                expect={EVENTS_RECEIVED},
                match={"prefect.resource.id": "specrec.events"},
                parameters=parameters
                | {"as_of": "{{ event.payload.as_of }}", "users": "{{ event.payload.users }}"},
            )
        )
    deployment = flow.to_deployment(
        name=row.tier,
        schedules=row.schedules(),
        paused=False,  # serve pauses the schedules when it stops; starting it again resumes them
        parameters=parameters,
        triggers=triggers,
        tags=["specrec", row.tier, *row.tags],
        description=(flow.description or "").strip().splitlines()[0] or None,
        # one run per deployment at a time: a late run waits for the one before instead of racing it
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.entrypoint = f"flows.deploy.{row.flow}"  # see __getattr__ (not __name__: may be __main__)
    return deployment


def deployments(params: Path, only: list[str] | None = None) -> list[Any]:
    """The RunnerDeployments of the table (or of the flows named in `only`), checked against params.yaml."""
    from specrec.config import load_config

    cfg = load_config(params)
    check_precompute_cadence(DEPLOYMENTS, cfg.speculation.window)
    known = [r.flow for r in DEPLOYMENTS]
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        raise SpecrecError(f"no deployment for flow(s) {unknown}; known: {known}.")
    events = cfg.speculation.trigger == "event"
    return [to_deployment(r, params.resolve(), events) for r in DEPLOYMENTS if not only or r.flow in only]


def describe(rows: tuple[Deployment, ...] = DEPLOYMENTS) -> str:
    """The table as text: flow, schedule, tags, retries."""
    lines = [f"{'deployment':<38} {'schedule (' + TIMEZONE + ')':<18} {'retries':<8} tags"]
    for r in rows:
        when = r.cron or (f"every {r.every}" if r.every else "triggered")
        extra = " + after each promotion" if r.on_promotion else ""
        extra += " + after interaction events (speculation.trigger: event)" if r.on_events else ""
        lines.append(f"{r.name:<38} {when:<18} {r.retries:<8} {', '.join(r.tags)}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, then serve the deployments (with --server: on a local Prefect server it starts)."""
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the project's params.yaml")
    ap.add_argument("--only", nargs="+", metavar="FLOW", help="serve only these flows' deployments")
    ap.add_argument("--limit", type=int, default=2, help="flow runs at a time (the demo machine has 2 cores)")
    ap.add_argument("--list", action="store_true", help="print the table and exit without serving")
    ap.add_argument("--server", action="store_true", help="start a local Prefect server first, stop it after")
    ap.add_argument("--port", type=int, default=4200, help="--server: its port on 127.0.0.1")
    ap.add_argument("--home", type=Path, default=Path(".prefect"), help="--server: its home (database, log)")
    args = ap.parse_args(argv)
    if args.list:
        print(describe())
        return 0
    try:
        found = deployments(args.params, args.only)
        if not args.server:
            return serve_all(found, args.limit)
        from flows.local_server import running
        from specrec.config import load_config

        cfg = load_config(args.params)
        database = None
        if cfg.production:  # the Prefect server's database is the profile's PostgreSQL
            from specrec.services import endpoints

            database = endpoints(cfg).prefect_database_url
        with running(args.home.resolve(), "127.0.0.1", args.port, database_url=database) as url:
            print(f"Prefect UI: {url.removesuffix('/api')}  (server log: {args.home / 'server.log'})")
            return serve_all(found, args.limit, url)
    except SpecrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def serve_all(found: list[Any], limit: int, api_url: str | None = None) -> int:
    """Register and serve the deployments until interrupted (against `api_url` when given)."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url} if api_url else {}):
        try:
            serve(*found, limit=limit)
        except KeyboardInterrupt:
            print("stopped serving (schedules paused until the next start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
