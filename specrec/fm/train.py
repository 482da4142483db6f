"""Stage `train_fm`: train the foundation model on history, log it to MLflow, register and gate it.

The base model trains on the leave-one-out view of history (every event before clock.start), so its
as_of is clock.start and its MLflow run is named by that date. Per-epoch loss, throughput and
validation metrics go to experiment `fm-train`; the checkpoint (safetensors + config.json + id map) is
logged as an MLflow pyfunc model and registered as `specrec-fm`; the `champion` alias moves only
when the new version beats the champion on validation (`fm.promote_metric`).

Under `torchrun` the same stage trains data-parallel (specrec.fm.distributed): rank 0 does all of the
above, the other ranks only train their slice of every batch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.train import EpochRecord, RecModel, TrainConfig, TrainResult, build_model, train
from specrec.config import Config, parse_timestamp
from specrec.fm.data import LooData, load_loo
from specrec.fm.pyfunc import ID_MAP_FILE
from specrec.io import read_parquet, write_json
from specrec.registry import Promotion, metric_key, promote_if_better
from specrec.runtime import stage_main
from specrec.tracking import experiment_id, use_project_store

if TYPE_CHECKING:
    from models.ddp import Shard

log = logging.getLogger(__name__)

EXPERIMENT = "fm-train"
REGISTERED_MODEL = "specrec-fm"
RUN_FILE = "mlflow_run.json"
MLFLOW_BATCH = 1000  # most metrics one MLflow log_batch call accepts
PIP_REQUIREMENTS = ["torch==2.13.0", "safetensors==0.8.0", "numpy==2.4.6", "pandas==2.3.3", "pyarrow==25.0.1"]


@dataclass(frozen=True)
class TrainOutcome:
    """The training result, where it was logged, and the gate's decision."""

    result: TrainResult
    run_id: str
    version: str
    promotion: Promotion


def train_config(cfg: Config, progress: bool = True) -> TrainConfig:
    """models.train.TrainConfig from params.yaml's fm.train."""
    return TrainConfig(**dataclasses.asdict(cfg.fm.train), progress=progress)


def fm_model(cfg: Config, data: LooData) -> RecModel:
    """The untrained FM for `data`, its weights seeded by fm.train.seed (so every DDP rank starts alike)."""
    torch.manual_seed(cfg.fm.train.seed)
    return build_model(cfg.fm.model, cfg.fm.model_config(data.n_items))


def _flat_params(cfg: Config, data: LooData) -> dict[str, Any]:
    """Run parameters: the whole fm section, flattened, plus the data it saw."""
    flat = {f"fm.{k}": v for k, v in dataclasses.asdict(cfg.fm).items() if k != "train"}
    flat |= {f"fm.train.{k}": v for k, v in dataclasses.asdict(cfg.fm.train).items()}
    return flat | {
        "data.users": len(data.train),
        "data.items": data.n_items,
        "data.train_tokens": data.n_tokens,
    }


def _epoch_logger(rows: list[dict[str, Any]]) -> Any:
    """A train() callback that logs each epoch to the active MLflow run and keeps a row for the plot file;
    the loss of every optimiser step goes to `train_step_loss` (step = optimiser step from 1)."""
    from mlflow.entities import Metric

    import mlflow

    steps = [0]

    def on_epoch(rec: EpochRecord) -> None:
        now = int(time.time() * 1000)
        curve = [Metric("train_step_loss", v, now, steps[0] + i + 1) for i, v in enumerate(rec.step_losses)]
        steps[0] += len(rec.step_losses)
        run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
        for i in range(0, len(curve), MLFLOW_BATCH):
            mlflow.MlflowClient().log_batch(run_id, metrics=curve[i : i + MLFLOW_BATCH])
        metrics = {
            "train_loss": rec.loss,
            "tokens_per_s": rec.tokens_per_s,
            "epoch_seconds": rec.train_seconds,
        }
        metrics |= {f"val_{metric_key(k)}": v for k, v in rec.metrics.items()}
        mlflow.log_metrics(metrics, step=rec.epoch)
        rows.append({"epoch": rec.epoch, **metrics})

    return on_epoch


def _write_epochs(rows: list[dict[str, Any]], path: Path) -> None:
    """Per-epoch CSV for `dvc plots`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)


def _log_model(checkpoint: Path) -> str:
    """Log the checkpoint as a pyfunc model, register it as specrec-fm; return the version."""
    import mlflow
    from specrec.fm.pyfunc import FMPyfunc

    info = mlflow.pyfunc.log_model(
        name="fm",
        python_model=FMPyfunc(),
        artifacts={"checkpoint": str(checkpoint)},
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=REGISTERED_MODEL,
    )
    return str(info.registered_model_version)


def train_fm(cfg: Config, progress: bool = True, shard: Shard | None = None) -> TrainOutcome:
    """Train, log, register and gate the FM; write the checkpoint folder and metrics.

    `shard`: this process is rank 0 of a DDP group (specrec.fm.distributed.train_stage runs the others).
    """
    import mlflow

    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    as_of = parse_timestamp("clock.start", cfg.clock.start)
    out = cfg.path(cfg.paths.fm)
    use_project_store(cfg)
    rows: list[dict[str, Any]] = []
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=as_of.date().isoformat()
    ) as run:
        mlflow.set_tags({"as_of": as_of.isoformat(), "model_type": cfg.fm.model, "stage": "train_fm"})
        world = 1 if shard is None else shard.world_size
        mlflow.log_params(_flat_params(cfg, data) | {"ddp.world_size": world})
        model = fm_model(cfg, data)
        tcfg = train_config(cfg, progress)
        result = train(model, data.train, data.valid, tcfg, _epoch_logger(rows), out, shard)
        ids = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
        ids[["item_idx", "item_id"]].to_parquet(out / ID_MAP_FILE, index=False)
        summary = {
            "best_epoch": result.best_epoch,
            "epochs": result.n_epochs,
            "train_seconds": result.train_seconds,
            "wall_seconds": result.wall_seconds,
            "tokens_per_s": result.tokens_per_s,
        }
        mlflow.log_metrics(summary | {f"best_val_{metric_key(k)}": v for k, v in result.best_metrics.items()})
        mlflow.set_tag("stopped", result.stopped)
        version = _log_model(out)
    promotion = promote_if_better(
        mlflow.MlflowClient(),
        REGISTERED_MODEL,
        version,
        cfg.fm.promote_metric,
        result.best_metrics[cfg.fm.promote_metric],
    )
    (out / RUN_FILE).write_text(json.dumps({"run_id": run.info.run_id, "version": version}, indent=2) + "\n")
    metrics_dir = cfg.path(cfg.paths.metrics)
    _write_epochs(rows, metrics_dir / "train_fm_epochs.csv")
    write_json(
        summary
        | {
            "stopped": result.stopped,
            "valid": result.best_metrics,
            "version": version,
            "promoted": promotion.promoted,
            "promotion_reason": promotion.reason,
        },
        metrics_dir / "train_fm.json",
    )
    log.info(
        "train_fm: %s v%s, valid %s, %s", REGISTERED_MODEL, version, result.best_metrics, promotion.reason
    )
    return TrainOutcome(result, run.info.run_id, version, promotion)


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.fm.train [--params params.yaml]`, also as every rank under torchrun."""
    from specrec.fm.distributed import train_stage

    stage_main(train_stage, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
