"""Retrain the FM base on every event known at as_of and promote it only through the holdout gate.

What drift triggers. The base trains like `train_fm` (same architecture and optimisation, leave-one-out
validation for early stopping) on every event before the cycle's holdout (the newest `lora.holdout_share`
of the cycle's events, the same holdout the daily gate uses), so the holdout is never trained on. The new
base and what serves now (the champion adapter on its base, else the bare champion base) are scored on
the holdout; the new version becomes `specrec-fm@champion` only when it is not worse (tolerance
`lora.tolerance`). The version is tagged with its training cutoff, so the next adapter knows which items
are new to it. Logged to the `fm-train` experiment, run named by as_of.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import mlflow
from models.train import EpochRecord, RecModel, TrainResult, build_model, train
from specrec.config import Config
from specrec.data.split import leave_one_out
from specrec.fm.data import load_loo
from specrec.fm.pyfunc import ID_MAP_FILE
from specrec.fm.train import EXPERIMENT, REGISTERED_MODEL, _epoch_logger, _log_model, train_config
from specrec.io import read_parquet
from specrec.lora import adapters
from specrec.lora.data import holdout_start
from specrec.lora.evaluate import score
from specrec.lora.finetune import cycle_at, known_events
from specrec.registry import metric_key
from specrec.tracking import experiment_id

log = logging.getLogger(__name__)

GATE_METRIC = "holdout_ndcg@10"  # a separate gate tag from train_fm's validation-based `gate_ndcg_at_10`


def _train_data(cfg: Config, events: Any, folder: Path) -> Any:
    """The leave-one-out view of `events`, through the same loader train_fm uses."""
    loo = leave_one_out(events, cfg.split.loo_min_events)
    loo.to_parquet(folder / "loo.parquet", index=False)
    return load_loo(folder, cfg.path(cfg.paths.prepared))


def train_base(
    cfg: Config,
    events: pd.DataFrame,
    folder: Path,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[RecModel, TrainResult, float]:
    """The FM trained like `train_fm` (params.yaml `fm`: model, optimisation, early stopping) on `events`.

    Leave-one-out validation for early stopping, initial weights seeded by fm.train.seed; the best epoch's
    checkpoint and the item id map are written to `folder` (a folder `_log_model` can register). Returns
    the model, the training result and the process CPU seconds of the training (data preparation aside).
    """
    data = _train_data(cfg, events, folder)
    cpu0 = time.process_time()
    torch.manual_seed(cfg.fm.train.seed)  # the initial weights too, not only the training order
    model = build_model(cfg.fm.model, cfg.fm.model_config(data.n_items))
    result = train(model, data.train, data.valid, train_config(cfg, progress), on_epoch, folder)
    cpu_s = time.process_time() - cpu0
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    items[["item_idx", "item_id"]].to_parquet(folder / ID_MAP_FILE, index=False)
    return model, result, cpu_s


def _serving_score(client: mlflow.MlflowClient, known: Any, window: Any) -> tuple[float, str]:
    """Holdout NDCG@10 of what serves now: the champion adapter on its base, else the champion base."""
    model, parts = adapters.serving_model(client)
    what = f"{REGISTERED_MODEL} v{parts['fm']}" + (
        f" + {adapters.ADAPTER_MODEL} v{parts['adapter']}" if parts["adapter"] else ""
    )
    return score(model, known, window, model.config.max_len).ndcg, what


def retrain_base(
    cfg: Config, as_of: object, flow_run_id: str = "", trigger: str = "manual", progress: bool = True
) -> dict[str, Any]:
    """Train, log, register and gate a new FM base at as_of; return the decision and figures."""
    client = mlflow.MlflowClient()
    cycle = cycle_at(cfg, as_of)
    known = known_events(cfg, cycle.as_of)
    cutoff = holdout_start(known[known["timestamp"] >= cycle.start], cycle, cfg.lora.holdout_share)
    window = dataclasses.replace(cycle, start=cutoff)
    before, what = _serving_score(client, known, window)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=cycle.name) as run,
    ):
        mlflow.set_tags(
            {
                "as_of": cycle.as_of.isoformat(),
                "stage": "retrain_base",
                "trigger": trigger,
                "prefect_flow_run_id": flow_run_id,
                adapters.CUTOFF: cutoff.isoformat(),
            }
        )
        model, result, cpu_s = train_base(
            cfg, known[known["timestamp"] < cutoff], Path(tmp), progress, _epoch_logger(rows)
        )
        new = score(model, known, window, model.config.max_len)
        mlflow.log_metrics(
            {
                f"{metric_key(GATE_METRIC)}": new.ndcg,
                "holdout_hr_at_10": new.metrics["hr@10"],
                "serving_holdout_ndcg_at_10": before,
                "train_cpu_s": cpu_s,
                "epochs": float(result.n_epochs),
            }
            | {f"best_val_{metric_key(k)}": v for k, v in result.best_metrics.items()}
        )
        version = _log_model(Path(tmp))
    client.set_model_version_tag(REGISTERED_MODEL, version, adapters.CUTOFF, cutoff.isoformat())
    client.set_model_version_tag(REGISTERED_MODEL, version, "trigger", trigger)
    decision = adapters.gate(
        client, REGISTERED_MODEL, version, GATE_METRIC, new.ndcg, before, None, cfg.lora.tolerance
    )
    client.set_tag(run.info.run_id, "gate_decision", "promoted" if decision.promoted else "rejected")
    client.set_tag(run.info.run_id, "gate_reason", f"{decision.reason} (serving: {what})")
    log.info("retrain_base %s: %s v%s %s", cycle.name, REGISTERED_MODEL, version, decision.reason)
    return {
        "as_of": cycle.name,
        "version": version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "holdout_ndcg@10": new.ndcg,
        "serving_holdout_ndcg@10": before,
        "serving": what,
        "train_cutoff": cutoff.isoformat(),
        "train_cpu_s": cpu_s,
        "run_id": run.info.run_id,
    }
