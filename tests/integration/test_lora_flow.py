"""Daily LoRA cycles against a copy of the tiny project's real MLflow store: the gate promotes and rejects,
rollback, a skipped cycle, missing and corrupt champions, and a real Prefect run where an ADWIN alarm runs
retrain_base."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

import mlflow
from models import lora
from specrec.config import Config, ServicesConfig, load_config
from specrec.errors import SpecrecError
from specrec.lora import adapters
from specrec.lora.finetune import EXPERIMENT, METRIC_KEYS, run_cycle
from specrec.registry import CHAMPION, alias_version
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import copy_project, prefect_harness, write_params
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CYCLE_1, CYCLE_2, CYCLE_3 = "2018-01-29", "2018-02-26", "2018-03-26"


def _project(tiny: TinyProject, folder: Path, **lora: object) -> Config:
    """A copy of the tiny project (its own MLflow store) with lora settings changed."""
    if not folder.exists():
        copy_project(tiny.cfg, folder, ("feast", "kv_cache"))
    return _params(folder, **lora)


def _params(folder: Path, **lora: object) -> Config:
    """Rewrite the copy's params.yaml lora section (small, fast settings plus overrides) and load it."""
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    raw["lora"] |= {"epochs": 2, "min_events": 20, "batch_size": 16, "r": 4, "alpha": 8.0} | lora
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return _use(load_config(folder / "params.yaml"))


def _use(cfg: Config) -> Config:
    """Point MLflow at this project's store (use_project_store prefers an inherited MLFLOW_TRACKING_URI)."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)
    use_project_store(cfg)
    return cfg


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora") / "project"


def _version_tags(version: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(adapters.ADAPTER_MODEL, version).tags)


def test_gate_promotes_rejects_and_rollback(tiny: TinyProject, copy_dir: Path) -> None:
    cfg = _project(tiny, copy_dir, tolerance=0.99)  # within 0.99 of NDCG: any challenger passes
    client = mlflow.MlflowClient()
    first = run_cycle(cfg, CYCLE_1, flow_run_id="run-1", progress=False)
    assert first.status == "promoted" and first.reason == "no champion yet"
    assert alias_version(client, adapters.ADAPTER_MODEL, CHAMPION) == first.adapter_version
    tags = _version_tags(first.adapter_version)
    assert tags["base_version"] == tiny.fm.version and tags["as_of"].startswith(CYCLE_1)
    local = Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="adapter"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in local.iterdir()}
    # the gate's evidence: with no champion the challenger is compared with the bare base
    m = first.metrics
    assert m["gate_diff_ndcg_at_10"] == m["challenger_ndcg_at_10"] - m["base_ndcg_at_10"]
    assert m["gate_diff_ci_low"] <= m["gate_diff_ci_high"] and m["holdout_users"] >= 1
    evidence = mlflow.get_run(first.run_id).data.tags["gate_evidence"]
    assert (
        evidence.startswith("challenger - bare base NDCG@10 ")
        and f"of {m['holdout_users']:.0f} users" in evidence
    )

    # the same cycle again, same seed, no warm start: the challenger equals the champion, and with no
    # tolerance a tie is not a win
    cfg = _params(copy_dir, tolerance=0.0)
    again = run_cycle(cfg, CYCLE_1, warm_start=False, progress=False)
    assert again.status == "rejected" and again.adapter_version != first.adapter_version
    assert again.metrics["challenger_ndcg_at_10"] == again.metrics["champion_ndcg_at_10"]
    gate = [again.metrics[f"gate_diff_{k}"] for k in ("ndcg_at_10", "ci_low", "ci_high")]
    assert gate == [0.0, 0.0, 0.0]  # the same scores on every holdout event: no doubt either way
    assert _version_tags(again.adapter_version)["gate_decision"] == "rejected"
    assert mlflow.get_run(again.run_id).data.tags["reason"] == again.reason != ""
    assert alias_version(client, adapters.ADAPTER_MODEL, CHAMPION) == first.adapter_version

    cfg = _params(copy_dir, tolerance=0.99, warm_start=True)
    second = run_cycle(cfg, CYCLE_2, progress=False)  # warm-started from the champion
    assert second.status == "promoted"
    assert mlflow.get_run(second.run_id).data.tags["warm_start_from"] == first.adapter_version
    assert _version_tags(second.adapter_version)[adapters.PREVIOUS] == first.adapter_version

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "specrec"),
            "model",
            "rollback",
            "--params",
            str(cfg.root / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"v{second.adapter_version} -> v{first.adapter_version}" in done.stdout
    assert alias_version(client, adapters.ADAPTER_MODEL, CHAMPION) == first.adapter_version

    runs = mlflow.search_runs([experiment_id(cfg.root, EXPERIMENT)], output_format="list")
    assert {r.info.run_name for r in runs} == {CYCLE_1, CYCLE_2}
    assert all(set(METRIC_KEYS) <= set(r.data.metrics) for r in runs)  # the same keys in every run
    assert {r.data.tags["prefect_flow_run_id"] for r in runs} >= {"run-1"}


def test_champion_adapter_merges_for_serving(tiny: TinyProject, copy_dir: Path) -> None:
    cfg = _project(tiny, copy_dir, tolerance=0.99)
    if adapters.champion_adapter(mlflow.MlflowClient()) is None:  # when this test runs on its own
        run_cycle(cfg, CYCLE_1, progress=False)
    champion = adapters.champion_adapter(mlflow.MlflowClient())
    assert champion is not None
    merged, parts = adapters.serving_model(mlflow.MlflowClient())
    assert parts == {"fm": champion.base_version, "adapter": champion.version}
    items = torch.randint(1, 500, (4, 20), generator=torch.Generator().manual_seed(0))
    ts = torch.arange(80).view(4, 20) * 3600 + 1_500_000_000
    with torch.no_grad():
        a = champion.model.user_state(items, ts) @ champion.model.item_embeddings().T
        b = merged.user_state(items, ts) @ merged.item_embeddings().T
    assert torch.max(torch.abs(a - b)).item() < 1e-5
    assert cfg.lora.new_item_rows and lora.token_rows(champion.model)  # new items have trained rows
    run = mlflow.get_run(
        mlflow.MlflowClient().get_model_version(adapters.ADAPTER_MODEL, champion.version).run_id
    )
    assert run.data.metrics["adapter_item_rows"] == len(lora.token_rows(champion.model))  # as logged


def test_too_few_events_skip_the_cycle(tiny: TinyProject, copy_dir: Path) -> None:
    cfg = _project(tiny, copy_dir, min_events=1_000_000)
    out = run_cycle(cfg, CYCLE_3, progress=False)
    assert out.status == "skipped" and "lora.min_events" in out.reason and out.adapter_version is None
    run = mlflow.get_run(out.run_id)
    assert run.data.tags["status"] == "skipped" and run.data.metrics["skipped"] == 1.0
    assert set(METRIC_KEYS) <= set(run.data.metrics) and math.isnan(run.data.metrics["challenger_ndcg_at_10"])
    # the new events counted (and trained on) are the cycle's with train_since cycle, every event since
    # the base's cutoff with base_cutoff (two cycles earlier here)
    just = _params(copy_dir, min_events=1_000_000, train_since="cycle")
    n_cycle = run_cycle(just, CYCLE_3, progress=False).metrics["new_events"]
    since = _params(copy_dir, min_events=1_000_000, train_since="base_cutoff")  # params.yaml's, left set
    n_since = run_cycle(since, CYCLE_3, progress=False).metrics["new_events"]
    assert n_since > n_cycle > 0


def test_adapter_of_another_base_does_not_serve(tiny: TinyProject, copy_dir: Path) -> None:
    from specrec.fm.train import _log_model

    cfg = _project(tiny, copy_dir, tolerance=0.99, warm_start=True)
    client = mlflow.MlflowClient()
    if adapters.champion_adapter(client) is None:  # when this test runs on its own
        run_cycle(cfg, CYCLE_1, progress=False)
    old_adapter = alias_version(client, adapters.ADAPTER_MODEL, CHAMPION)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, "fm-train")):
        base = _log_model(cfg.path(cfg.paths.fm))  # a new base version (what retrain_base registers)
    client.set_model_version_tag(adapters.BASE_MODEL, base, adapters.CUTOFF, "2018-01-01T00:00:00+00:00")
    client.set_registered_model_alias(adapters.BASE_MODEL, CHAMPION, base)
    assert adapters.serving_model(client)[1] == {"fm": base, "adapter": ""}  # the old adapter stops serving

    out = run_cycle(cfg, CYCLE_2, progress=False)
    assert out.base_version == base and math.isnan(out.metrics["champion_ndcg_at_10"])
    assert mlflow.get_run(out.run_id).data.tags["warm_start_from"] == ""  # never from another base
    assert out.status == "promoted" and _version_tags(out.adapter_version)[adapters.PREVIOUS] == old_adapter
    assert adapters.serving_model(client)[1] == {"fm": base, "adapter": out.adapter_version}


def test_missing_and_corrupt_champion_are_named(tiny: TinyProject, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()  # the tiny project's settings over empty stores of its own
    cfg = _use(write_params(dataclasses.replace(tiny.cfg, services=ServicesConfig()), empty / "params.yaml"))
    with pytest.raises(SpecrecError, match="no specrec-fm@champion"):
        run_cycle(cfg, CYCLE_1, progress=False)

    from specrec.fm.train import _log_model

    broken = tmp_path / "checkpoint"
    shutil.copytree(tiny.cfg.path(tiny.cfg.paths.fm), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, "fm-train")):
        version = _log_model(broken)
    mlflow.MlflowClient().set_registered_model_alias(adapters.BASE_MODEL, CHAMPION, version)
    with pytest.raises(SpecrecError, match=rf"specrec-fm@champion \(v{version}\) cannot be loaded"):
        run_cycle(cfg, CYCLE_1, progress=False)


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


def test_flow_adwin_alarm_runs_retrain_base(tiny: TinyProject, tmp_path: Path, harness: None) -> None:
    from flows.daily_lora_finetune import daily_lora_finetune

    cfg = _project(tiny, tmp_path / "project")
    state = cfg.path(cfg.lora.drift.state)
    state.parent.mkdir(parents=True, exist_ok=True)
    # a long stretch of near-perfect cycles: the real (tiny) model's errors near 1.0 are a shift
    state.write_text(json.dumps({"window": [0.0] * 300, "cycles": []}))
    n_versions = len(mlflow.MlflowClient().search_model_versions(f"name='{adapters.BASE_MODEL}'"))

    flow_state = daily_lora_finetune(as_of=CYCLE_2, params=str(cfg.root / "params.yaml"), return_state=True)
    assert flow_state.is_completed(), flow_state
    result = flow_state.result()
    assert result["drift"]["alarm"] and result["drift"]["decision"] == "retrain_base"
    assert result["drift"]["drift_mean_before"] == 0.0 and result["drift"]["drift_mean_after"] > 0.5

    client = mlflow.MlflowClient()
    retrained = result["retrain"]
    new = client.get_model_version(adapters.BASE_MODEL, retrained["version"])
    assert new.tags["trigger"] == "adwin" and new.tags["gate_decision"] in ("promoted", "rejected")
    assert new.tags[adapters.CUTOFF] == retrained["train_cutoff"] < f"{CYCLE_2}T00:00:00+00:00"
    assert len(client.search_model_versions(f"name='{adapters.BASE_MODEL}'")) == n_versions + 1

    run = mlflow.get_run(result["cycle"]["run_id"])
    assert run.data.metrics["drift_alarm"] == 1.0 and run.data.tags["drift_decision"] == "retrain_base"
    assert run.data.tags["prefect_flow_run_id"] == str(flow_state.state_details.flow_run_id)
    stored = json.loads(state.read_text())
    assert stored["window"] == [] and stored["cycles"][-1]["reset"].startswith("retrain_base")
