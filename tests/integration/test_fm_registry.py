"""FM stages on the shipped data with a tiny model: real MLflow tracking and registry, gate, and load-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from models.sequences import history_batch
from models.train import load_checkpoint
from specrec.config import Config
from specrec.fm.evaluate import evaluate_fm
from specrec.fm.train import REGISTERED_MODEL, TrainOutcome
from specrec.registry import CHAMPION, alias_version, promote_if_better
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def trained(tiny: TinyProject) -> tuple[Config, TrainOutcome]:
    return tiny.cfg, tiny.fm


def test_training_is_logged_and_registered(trained: tuple[Config, TrainOutcome]) -> None:
    cfg, outcome = trained
    run = mlflow.get_run(outcome.run_id)
    assert run.info.run_name == "2018-01-01"  # the as_of of the base model: clock.start
    assert run.data.params["fm.model"] == "hstu" and run.data.tags["as_of"].startswith("2018-01-01")
    history = mlflow.MlflowClient().get_metric_history(outcome.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, outcome.result.n_epochs + 1))
    assert history[-1].value < history[0].value  # training lowers the loss
    assert (
        outcome.promotion.promoted and alias_version(mlflow.MlflowClient(), REGISTERED_MODEL, CHAMPION) == "1"
    )
    if not cfg.production:  # the embedded profile's store is the project's SQLite file
        assert (cfg.root / "mlflow" / "mlflow.db").is_file()
    version = mlflow.MlflowClient().get_model_version(REGISTERED_MODEL, outcome.version)
    local = Path(mlflow.artifacts.download_artifacts(version.source))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {
        "model.safetensors",
        "config.json",
        "items.parquet",
        "MLmodel",
    } <= files  # weights, config, id map


def test_champion_loads_back_with_identical_scores(trained: tuple[Config, TrainOutcome]) -> None:
    cfg, _ = trained
    local = load_checkpoint(cfg.path(cfg.paths.fm))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    served = pyfunc.unwrap_python_model().model
    loo = pd.read_parquet(cfg.path(cfg.paths.split) / "loo.parquet").head(32)
    from models.sequences import Sequences

    seqs = Sequences(
        [np.asarray(v) for v in loo["train_items"]], [np.asarray(v) for v in loo["train_timestamps"]]
    )
    items, times = history_batch(seqs, np.arange(len(seqs)), local.config.max_len)
    with torch.no_grad():
        a = local.user_state(items, times) @ local.item_embeddings().T
        b = served.user_state(items, times) @ served.item_embeddings().T
    assert torch.equal(a, b)
    frame = pd.DataFrame({"items": loo["train_items"].head(2), "timestamps": loo["train_timestamps"].head(2)})
    top = pyfunc.predict(frame)
    assert len(top) == 2 and len(top["item_idx"][0]) == 10
    assert not set(top["item_idx"][0]) & set(loo["train_items"][0])  # seen items are excluded
    ids = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet").set_index("item_idx")["item_id"]
    assert list(top["item_id"][0]) == list(ids.loc[top["item_idx"][0]])


def test_evaluate_writes_test_metrics(trained: tuple[Config, TrainOutcome]) -> None:
    cfg, outcome = trained
    metrics = evaluate_fm(cfg)
    assert set(metrics["fm"]) >= {"hr@10", "ndcg@10", "hr@50", "ndcg@200", "mrr"}
    assert metrics["users"] == 581
    run = mlflow.get_run(outcome.run_id)
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(metrics["fm"]["ndcg@10"])


def test_gate_moves_champion_only_for_a_better_version(trained: tuple[Config, TrainOutcome]) -> None:
    cfg, outcome = trained
    client = mlflow.MlflowClient()
    base = outcome.promotion.challenger_score
    v2 = client.create_model_version(REGISTERED_MODEL, f"runs:/{outcome.run_id}/fm", outcome.run_id).version
    worse = promote_if_better(client, REGISTERED_MODEL, str(v2), "ndcg@10", base - 0.01)
    assert not worse.promoted and alias_version(client, REGISTERED_MODEL, CHAMPION) == "1"
    assert client.get_model_version(REGISTERED_MODEL, str(v2)).tags["gate_decision"] == "rejected"
    assert "does not beat" in worse.reason
    better = promote_if_better(client, REGISTERED_MODEL, str(v2), "ndcg@10", base + 0.01)
    assert better.promoted and alias_version(client, REGISTERED_MODEL, CHAMPION) == str(v2)
    client.set_registered_model_alias(
        REGISTERED_MODEL, CHAMPION, outcome.version
    )  # leave the project as found
