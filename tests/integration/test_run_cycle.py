"""run_cycle as a real Prefect flow run (test harness) on a tiny project of its own (real MLflow registry,
real Feast store): every step in order, the cycle's counts, the bundle serving, and idempotence per as_of
(a rerun registers nothing and returns the same bundle; after a crash past some steps they are skipped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import mlflow
from flows.run_cycle import run_cycle
from specrec.clock import ReplayClock
from specrec.config import Config
from specrec.nearline import bundles
from specrec.nearline.store import apply
from specrec.replay.cycle import resolve_as_of
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import prefect_harness
from tests.integration.cycle_project import cycle_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = ("specrec-fm", "specrec-fm-adapter", "specrec-speculator", "specrec-bundle", "specrec-codebook")
EXPERIMENTS = ("lora-finetune", "speculation", "materialize", "cycle")


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Config:
    cfg = cycle_project(tmp_path_factory, root)
    use_project_store(cfg)
    apply(cfg)
    return cfg


def _versions(client: mlflow.MlflowClient) -> dict[str, list[str]]:
    """Every registered version of every model."""
    return {m: sorted(v.version for v in client.search_model_versions(f"name='{m}'")) for m in MODELS}


def _runs(cfg: Config) -> dict[str, int]:
    """Active runs per experiment."""
    return {
        e: len(mlflow.search_runs([experiment_id(cfg.root, e)], output_format="list")) for e in EXPERIMENTS
    }


def test_cycle_runs_every_step_once_per_as_of(project: Config, harness: None) -> None:
    cfg, client = project, mlflow.MlflowClient()
    params = str(cfg.root / "params.yaml")
    as_of = resolve_as_of(cfg, "3")  # the replay test runs cycles 1-2 of the same project
    cycle = ReplayClock.from_config(cfg.clock).cycle(3)
    state = run_cycle(as_of=as_of, params=params, return_state=True)
    assert state.is_completed(), state
    first = state.result()
    assert not first["reused"]
    steps = first["steps"]
    assert list(steps) == [
        "ingest", "lora", "codebook", "speculator", "item_repr", "item_stats", "user_state", "precompute"
    ]
    assert not any(s.startswith("done before") for s in steps.values()), steps
    assert steps["codebook"].startswith("skipped: no specrec-codebook@champion")
    serving = bundles.serving(client)
    assert serving is not None and serving.bundle_id == first["bundle_id"]
    assert serving.version == first["bundle_version"]

    # the cycle's counts are those of the events in [as_of - cadence, as_of)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    mine = events[(events["timestamp"] >= cycle.start) & (events["timestamp"] < cycle.as_of)]
    ingest = first["ingest"]
    assert ingest["events"] == len(mine) > 0 and ingest["users"] == mine["user_id"].nunique()
    assert ingest["known_events"] == int((events["timestamp"] < cycle.as_of).sum())
    run = mlflow.get_run(first["run_id"])
    assert run.info.experiment_id == experiment_id(cfg.root, "cycle") and run.info.run_name == cycle.name
    assert run.data.tags["as_of"] == cycle.as_of.isoformat() and run.data.metrics["events"] == len(mine)
    adapters = client.search_model_versions("name='specrec-fm-adapter'")
    assert sum(v.tags.get("as_of") == cycle.as_of.isoformat() for v in adapters) <= 1

    # a rerun of the complete cycle: same bundle, no registered version, no run anywhere
    versions, runs = _versions(client), _runs(cfg)
    again = run_cycle(as_of=as_of, params=params)
    assert again["reused"] and again["bundle_id"] == first["bundle_id"]
    assert _versions(client) == versions and _runs(cfg) == runs

    # a cycle that died before it was recorded: the steps that ran are found by their as_of runs
    client.delete_run(first["run_id"])
    third = run_cycle(as_of=as_of, params=params)
    assert not third["reused"] and third["bundle_id"] == first["bundle_id"]
    for step in ("lora", "speculator", "precompute"):
        assert third["steps"][step].startswith("done before"), third["steps"]
    assert _versions(client) == versions
    assert _runs(cfg) == runs  # the new cycle run replaces the deleted one; nothing else was logged
    assert bundles.serving(client).bundle_id == first["bundle_id"]  # type: ignore[union-attr]


def test_cli_refuses_bad_as_of_in_one_line(root: Path) -> None:
    import subprocess
    import sys

    for value, expected in (("soon", "as_of = 'soon'"), ("12", "cycle 12 does not exist")):
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "specrec"), "cycle", "run", "--as-of", value],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in proc.stderr


def test_a_failed_step_is_run_again_unless_its_run_is_in_mlflow(
    project: Config, harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    import flows.run_cycle as module
    from specrec.errors import SpecrecError

    monkeypatch.setattr(module, "RETRY_DELAY_S", 0)
    cfg, as_of = project, resolve_as_of(project, "9")  # no other test runs cycle 9
    calls: list[str] = []

    def flaky() -> dict[str, int]:
        calls.append("flaky")
        if len(calls) == 1:
            raise RuntimeError("online store went away")
        return {"n": 7}

    def registers_then_fails() -> dict[str, int]:
        calls.append("registers")
        with mlflow.start_run(experiment_id=experiment_id(cfg.root, "lora-finetune"), run_name="probe"):
            mlflow.set_tag("as_of", as_of)
        raise RuntimeError("drift check failed after the adapter was registered")

    def bad_input() -> dict[str, int]:
        calls.append("bad")
        raise SpecrecError("bad configuration")

    @flow
    def probe() -> dict[str, str]:
        steps = module._Steps(str(cfg.root / "params.yaml"), as_of)
        steps.run("flaky", flaky, lambda r: f"n={r['n']}")
        steps.run("lora", registers_then_fails, str, ("lora-finetune", {}))
        with pytest.raises(SpecrecError):
            steps.run("bad", bad_input, str)
        return steps.outcome

    outcome = probe()
    assert outcome["flaky"] == "n=7" and outcome["lora"].startswith("done before (run ")
    assert calls == ["flaky", "flaky", "registers", "bad"]  # the registered step and bad input: once
