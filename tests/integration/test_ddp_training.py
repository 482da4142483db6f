"""FM training under torchrun: two gloo ranks (real processes, `specrec fm train --nproc 2`, which runs
`torchrun --standalone`) follow the loss curve of one process on the same global batch (the shipped
params' loss, pair loss and random windows, dropout off) and end with the same weights; only rank 0 logs
to MLflow and registers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import mlflow
from specrec.config import Config, PathsConfig, load_config
from specrec.data import prepare, split
from specrec.data.ingest import ingest
from specrec.fm.data import load_loo
from specrec.fm.train import EXPERIMENT, RUN_FILE, train_fm
from specrec.tracking import use_project_store

SPECREC = str(Path(sys.executable).parent / "specrec")
# Per-step loss of 2 ranks vs 1 process (dropout 0): float rounding only, measured ~1e-6 (docs/operations.md)
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4
# 581 training users = 10 x 58 + 1: every epoch has a one-row batch, so rank 1 also steps with no rows
BATCH = 58


def _project(root: Path, tmp: Path) -> Config:
    """The shipped data through ingest/prepare/split in `tmp`, with a tiny FM and dropout off."""
    cfg = load_config(root / "params.yaml")
    paths = PathsConfig(**{f.name: f"data/{f.name}" for f in dataclasses.fields(PathsConfig)})
    train = dataclasses.replace(cfg.fm.train, max_epochs=2, batch_size=BATCH, time_budget_s=None)
    fm = dataclasses.replace(cfg.fm, dim=16, max_len=30, n_layers=1, dropout=0.0, train=train)
    data = dataclasses.replace(cfg.data, path=str(root / cfg.data.path))
    cfg = dataclasses.replace(cfg, paths=paths, data=data, fm=fm, root=tmp)
    raw = dataclasses.asdict(cfg)
    raw.pop("root")
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(tmp / "params.yaml")
    ingest(cfg)
    prepare.run(cfg)
    split.run(cfg)
    loo = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    users = int((loo.train.lengths() >= 2).sum())
    assert users % BATCH == 1, f"{users} training users: pick a batch size that leaves a batch of one row"
    return cfg


def _curve(client: mlflow.MlflowClient, run_id: str) -> np.ndarray:
    """train_step_loss of a run, by step."""
    history = sorted(client.get_metric_history(run_id, "train_step_loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    return np.array([m.value for m in history])


def test_two_ranks_follow_the_single_process_loss_curve(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SPECREC_PROFILE"):
        monkeypatch.delenv(var, raising=False)  # the project's own SQLite store, in and out of process
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _project(root, tmp_path)
    fm_dir = cfg.path(cfg.paths.fm)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        t0 = time.perf_counter()
        single = train_fm(cfg, progress=False)
        single_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    shutil.copy(fm_dir / "model.safetensors", tmp_path / "single.safetensors")

    t0 = time.perf_counter()
    proc = subprocess.run(
        [SPECREC, "fm", "train", "--nproc", "2", "--params", str(tmp_path / "params.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    ddp_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]

    use_project_store(cfg.root)
    client = mlflow.MlflowClient()
    ddp_run = json.loads((fm_dir / RUN_FILE).read_text())["run_id"]
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2, "rank 1 must not log a run of its own"
    assert client.get_run(ddp_run).data.params["ddp.world_size"] == "2"
    assert client.get_run(single.run_id).data.params["ddp.world_size"] == "1"

    one, two = _curve(client, single.run_id), _curve(client, ddp_run)
    assert len(one) == len(two) == len(single.result.step_losses) >= 10
    assert one[-3:].mean() < one[:3].mean() - 0.1, f"the curve must move to compare anything: {one}"
    rel = np.abs(two - one) / np.abs(one)
    print(f"steps {len(one)}, max rel diff {rel.max():.2e}, single {single_s:.1f}s, torchrun {ddp_s:.1f}s")
    assert rel.max() < LOSS_RTOL, f"per-step loss differs: max relative diff {rel.max():.2e}\n{one}\n{two}"

    a, b = load_file(str(tmp_path / "single.safetensors")), load_file(str(fm_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    print(f"max abs weight diff {max(float((a[k] - b[k]).abs().max()) for k in a):.2e}")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    assert client.get_run(ddp_run).data.metrics["best_val_ndcg_at_10"] == pytest.approx(
        client.get_run(single.run_id).data.metrics["best_val_ndcg_at_10"], abs=1e-3
    )
