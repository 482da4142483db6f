"""The Prefect deployments against a real `prefect server start` on a free loopback port: every deployment
registers with its cron schedule, timezone, parameters and tags (read back through the Prefect client);
a promotion event schedules a materialization run with the promotion's as_of; and a run of
update_item_stats triggered on the server is picked up by a real `python -m flows.deploy` serve process
and reaches Completed, its as_of resolved from the scheduled start time. The run writes into a copy of
the tiny project, so the session's shared one is untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import mlflow
from flows.deploy import DEPLOYMENTS, TIMEZONE, deployments, to_deployment
from flows.local_server import running
from specrec.config import load_config
from specrec.errors import SpecrecError
from tests.conftest import copy_project, prefect_database, require
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server in a temp home; its API URL. Fails in CI, skips locally, if it cannot start."""
    from specrec.services import free_port

    home, database = tmp_path_factory.mktemp("prefect-home"), prefect_database()
    server = running(home, "127.0.0.1", free_port(), timeout_s=90, database_url=database)
    try:
        url = server.__enter__()
    except SpecrecError as e:
        require(False, f"a Prefect server that starts (`prefect server start`: {e})")
    yield url
    server.__exit__(None, None, None)


@pytest.fixture
def client(server: str) -> Iterator[object]:
    """A sync Prefect client of that server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server}), get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def project(tiny: TinyProject, tmp_path: Path) -> Path:
    """A copy of the tiny project (its params.yaml) with the Feast store applied."""
    from specrec.nearline.store import apply

    root = tmp_path / "project"
    apply(copy_project(tiny.cfg, root))
    return root / "params.yaml"


def test_every_deployment_registers_with_its_schedule(client: object, server: str, project: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server}):
        for d in deployments(project):
            d.apply()
    for row in DEPLOYMENTS:
        dep = client.read_deployment_by_name(row.name)  # type: ignore[attr-defined]
        crons = [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules]
        assert crons == ([(row.cron, TIMEZONE, True)] if row.cron else []), row.flow
        expected = {"params": str(project.resolve())} | row.parameters
        expected |= {"as_of": "scheduled"} if row.scheduled_as_of else {}
        assert dep.parameters == expected, row.flow
        assert set(dep.tags) == {"specrec", row.tier, *row.tags}, row.flow
        assert dep.entrypoint == f"flows.deploy.{row.flow}"  # the flow with the row's retries
    cron = {r.flow: r.cron for r in DEPLOYMENTS}  # the schedule issue 9 asks for
    assert cron["daily_lora_finetune"] == "0 2 * * *" and cron["codebook_refresh"] == "0 3 * * *"
    assert cron["retrain_speculator"] == "0 4 * * *" and cron["materialize_item_embeddings"] == "*/15 * * * *"
    nearline = ("update_user_state", "update_item_stats", "speculative_precompute")
    assert {cron[f] for f in nearline} == {"*/5 * * * *"}
    # a sub-minute precompute cadence (speculation.window 30s) registers as a 30-second interval schedule
    import dataclasses

    row = dataclasses.replace(
        next(r for r in DEPLOYMENTS if r.flow == "speculative_precompute"), cron=None, every="30s"
    )
    with temporary_settings(updates={PREFECT_API_URL: server}):
        to_deployment(row, project).apply()
    (schedule,) = client.read_deployment_by_name(row.name).schedules  # type: ignore[attr-defined]
    assert schedule.schedule.interval.total_seconds() == 30 and schedule.active
    assert schedule.schedule.timezone == TIMEZONE
    with temporary_settings(updates={PREFECT_API_URL: server}):
        to_deployment(
            next(r for r in DEPLOYMENTS if r.flow == row.flow), project, events=True
        ).apply()  # the table's again (the tiny project's params.yaml has speculation.trigger: event)
    materialize = client.read_deployment_by_name(  # type: ignore[attr-defined]
        "materialize_item_embeddings/nearline"
    )
    automations = client.read_resource_related_automations(  # type: ignore[attr-defined]
        f"prefect.deployment.{materialize.id}"
    )
    assert [a.trigger.expect for a in automations] == [{"specrec.champion.promoted"}]
    assert automations[0].actions[0].parameters["as_of"] == "{{ event.payload.as_of }}"
    # a promotion (the event the promoting flows emit) makes the server schedule a materialization run
    _announce_promotion(server, "2018-02-26T00:00:00+00:00")
    deadline = time.monotonic() + 30
    while not (runs := _runs_of(client, materialize.id, "2018-02-26T00:00:00+00:00")):
        assert time.monotonic() < deadline, "no materialize_item_embeddings run after the promotion event"
        time.sleep(0.5)
    assert runs[0].parameters == dict(materialize.parameters) | {"as_of": "2018-02-26T00:00:00+00:00"}
    # speculation.trigger: event: a micro-batch of interaction events schedules an event-triggered precompute
    precompute = client.read_deployment_by_name("speculative_precompute/nearline")  # type: ignore[attr-defined]
    automations = client.read_resource_related_automations(  # type: ignore[attr-defined]
        f"prefect.deployment.{precompute.id}"
    )
    assert [a.trigger.expect for a in automations] == [{"specrec.events.received"}]
    _announce_events(server, "2018-02-26T00:10:05+00:00", [3, 5])
    deadline = time.monotonic() + 30
    while not (runs := _runs_of(client, precompute.id, "2018-02-26T00:10:05+00:00")):
        assert time.monotonic() < deadline, "no speculative_precompute run after the events event"
        time.sleep(0.5)
    assert runs[0].parameters == dict(precompute.parameters) | {
        "as_of": "2018-02-26T00:10:05+00:00",
        "users": "3,5",
    }


def _announce_promotion(server: str, as_of: str) -> None:
    """Emit the promotion event as the flows do, and wait until it is sent."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import announce_promotion

    with temporary_settings(updates={PREFECT_API_URL: server}):
        announce_promotion("specrec-fm-adapter", 1, as_of)
        EventsWorker.drain_all()


def _announce_events(server: str, as_of: str, users: list[int]) -> None:
    """Emit a micro-batch's events event as an event consumer would, and wait until it is sent."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import announce_events

    with temporary_settings(updates={PREFECT_API_URL: server}):
        announce_events(as_of, users)
        EventsWorker.drain_all()


def _runs_of(client: object, deployment_id: object, as_of: str) -> list:  # type: ignore[type-arg]
    """The flow runs of a deployment with this as_of."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    found = client.read_flow_runs(  # type: ignore[attr-defined]
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [r for r in found if r.parameters.get("as_of") == as_of]


def _serve(project: Path, api_url: str, log: Path) -> subprocess.Popen[bytes]:
    """`python -m flows.deploy` serving update_item_stats against the server, in its own session."""
    env = dict(os.environ) | {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(log.parent / "serve-home")}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"  # seconds between polls for runs (default 10)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "--params", str(project), "--only", "update_item_stats"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_triggered_run_completes_with_the_scheduled_as_of(
    client: object, server: str, project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    proc = _serve(project, server, log)
    try:
        run = _trigger_when_served(client, proc, log)
        deadline = time.monotonic() + 90
        while not (run := client.read_flow_run(run.id)).state.is_final():  # type: ignore[attr-defined]
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # serve pauses its schedules and exits
        proc.wait(timeout=30)
    assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
    assert run.parameters["as_of"] == "scheduled"
    assert run.empirical_policy.retries == 1  # the row's flow-level retries reached the served run
    as_of = pd.Timestamp(run.expected_start_time).tz_convert("UTC").floor("s").isoformat()
    from specrec.tracking import experiment_id, use_project_store

    use_project_store(load_config(project))
    written = mlflow.search_runs(
        [experiment_id(project.parent, "materialize")], "tags.view = 'item_stats'", output_format="list"
    )
    assert as_of in {r.data.tags["as_of"] for r in written}


def _trigger_when_served(client: object, proc: subprocess.Popen[bytes], log: Path) -> object:
    """Create a run of update_item_stats once the serve process has registered it."""
    deadline = time.monotonic() + 60
    while "are being served" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    dep = client.read_deployment_by_name("update_item_stats/nearline")  # type: ignore[attr-defined]
    return client.create_flow_run_from_deployment(dep.id)  # type: ignore[attr-defined]
