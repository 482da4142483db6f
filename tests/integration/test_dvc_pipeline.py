"""The real DVC pipeline in a project copy: repro, a no-op repro, and re-running only what a param touches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from specrec.config import load_config
from tests.conftest import PROFILE, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(args: list[str], cwd: Path) -> str:
    env = os.environ | {
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy logs to its own mlflow/mlflow.db
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("project")
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(root / name, dst / name)
    for name in ("specrec", "models", "datasets"):
        shutil.copytree(root / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["fm"] |= {"dim": 8, "max_len": 20, "n_layers": 1}  # a CI-sized FM: the pipeline, not the accuracy
    params["fm"]["train"] |= {"max_epochs": 1, "batch_size": 256, "time_budget_s": 60}
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    write_params(load_config(dst / "params.yaml"), dst / "params.yaml")  # on the suite's profile
    _run(["git", "init", "-q"], dst)
    _run([sys.executable, "-m", "dvc", "init", "-q"], dst)
    return dst


def _stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_then_noop_then_only_dependents(project: Path) -> None:
    # The data and FM stages (the codebook stages after them embed the whole catalogue with MiniLM,
    # minutes on CI: tests/integration/test_codebook_flow.py runs their code on a slice instead).
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro", "evaluate_fm"], project)
    assert _stages_run(first) == ["ingest", "prepare", "split", "train_fm", "evaluate_fm"]
    for out in (
        "data/ingested/interactions.parquet",
        "data/prepared/sequences.parquet",
        "data/split/loo.parquet",
        "data/metrics/split.json",
        "data/models/fm/model.safetensors",
        "data/metrics/evaluate_fm.json",
        "dvc.lock",
    ) + (("mlflow/mlflow.db",) if PROFILE == "embedded" else ()):  # production: MLflow in PostgreSQL
        assert (project / out).is_file(), out

    second = _run([*dvc, "repro", "evaluate_fm"], project)
    assert _stages_run(second) == [] and "up to date" in second

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clock"]["cycles"] = 5  # only the replay part of the split changes: the FM is not retrained
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run([*dvc, "repro", "evaluate_fm"], project)
    assert _stages_run(third) == ["split"]

    params["validate"]["rating_max"] = 4.0  # quarantines the 5-star ratings: all stages re-run
    params["validate"]["max_quarantine_share"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert _stages_run(_run([*dvc, "repro", "evaluate_fm"], project)) == [
        "ingest",
        "prepare",
        "split",
        "train_fm",
        "evaluate_fm",
    ]

    metrics = _run([*dvc, "metrics", "show"], project)
    assert "interactions_quarantined" in metrics and "fm.ndcg@10" in metrics
    assert "ingest" in _run([*dvc, "dag"], project)
