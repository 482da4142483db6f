"""Stage `codebook`: train the initial RQ-VAE codebook at clock.start, log its health, register and gate it.

The codebook is trained on the items first seen before clock.start (the FM's training cutoff), with the
FM of the `train_fm` stage as collaborative input. Its health goes to MLflow `codebook-refresh` (run
named by the as_of date), the folder to `codebook.out`, the figures to data/metrics/codebook.json, and
the folder becomes a `specrec-codebook` version; `champion` moves only when it reconstructs the same
items better than the current champion (or there is none).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlflow import MlflowClient
from specrec.codebook import versions
from specrec.codebook.build import FMInfo, Trained, train_codebook
from specrec.config import Config, parse_timestamp
from specrec.io import read_parquet, write_json
from specrec.registry import Promotion
from specrec.runtime import stage_main
from specrec.tracking import experiment_id, use_project_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodebookOutcome:
    """What the stage (or a retrain) produced."""

    trained: Trained
    version: str
    run_id: str
    promotion: Promotion


def stage_fm(cfg: Config) -> FMInfo | None:
    """The FM of the train_fm stage (checkpoint folder + its registry version), if there is one."""
    from models.train import load_checkpoint

    folder = cfg.path(cfg.paths.fm)
    if not (folder / "model.safetensors").exists():
        log.warning("no FM at %s: the codebook is trained on content embeddings alone", folder)
        return None
    run_file = folder / "mlflow_run.json"
    version = json.loads(run_file.read_text())["version"] if run_file.exists() else ""
    return FMInfo(str(version), parse_timestamp("clock.start", cfg.clock.start), load_checkpoint(folder))


def run_params(cfg: Config) -> dict[str, Any]:
    """The codebook section, flattened, as MLflow params."""
    flat = {f"codebook.{k}": v for k, v in asdict(cfg.codebook).items() if k != "drift"}
    return flat | {f"codebook.drift.{k}": v for k, v in asdict(cfg.codebook.drift).items()}


def log_health(trained: Trained, prefix: str = "") -> dict[str, float]:
    """Log the health of a trained codebook (and its stability, when it has a predecessor)."""
    import mlflow

    metrics = trained.codebook.health().metrics(prefix)
    metrics |= {f"{prefix}{k}": v for k, v in trained.stability.items()}
    metrics[f"{prefix}items_without_text"] = float(trained.inputs.without_text)
    metrics[f"{prefix}items_uncoded"] = float(len(trained.inputs.uncoded))
    mlflow.log_metrics(metrics)
    for epoch, loss in enumerate(trained.losses, 1):
        mlflow.log_metric(f"{prefix}train_loss", loss, step=epoch)
    return metrics


def known_items(cfg: Config, as_of: pd.Timestamp) -> pd.DataFrame:
    """Catalogue items first seen before as_of."""
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    return items[items["first_seen"].notna() & (items["first_seen"] < as_of)]


def train_and_register(
    cfg: Config,
    client: MlflowClient,
    items: pd.DataFrame,
    fm: FMInfo | None,
    as_of: pd.Timestamp,
    run_id: str,
    previous: versions.Codebook | None = None,
    previous_fm: FMInfo | None = None,
    folder: Path | None = None,
    progress: bool = True,
) -> CodebookOutcome:
    """Train inside the active run, log its health, register it and run the gate."""
    trained = train_codebook(cfg, items, fm, as_of, previous, progress)
    log_health(trained, "" if previous is None else "retrain_")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = trained.codebook.save(folder or Path(tmp) / "codebook")
        tags = {"as_of": as_of.isoformat(), "fm_version": fm.version if fm else "", "items": str(len(items))}
        version = versions.register(client, out, run_id, tags)
    client.set_model_version_tag(versions.REGISTERED_MODEL, version, "assigned_as_of", as_of.isoformat())
    promotion = versions.gate(client, cfg, version, trained.codebook, items, fm, previous_fm or fm)
    return CodebookOutcome(trained, version, run_id, promotion)


def train_initial(cfg: Config, progress: bool = True) -> CodebookOutcome:
    """The stage: train at clock.start, log, register, gate; write the folder and metrics."""
    import mlflow

    as_of = parse_timestamp("clock.start", cfg.clock.start)
    use_project_store(cfg)
    client = MlflowClient()
    items = known_items(cfg, as_of)
    fm = stage_fm(cfg)
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, versions.EXPERIMENT), run_name=as_of.date().isoformat()
    ) as run:
        mlflow.set_tags(
            {"as_of": as_of.isoformat(), "stage": "codebook", "fm_version": fm.version if fm else ""}
        )
        mlflow.log_params(run_params(cfg))
        outcome = train_and_register(
            cfg,
            client,
            items,
            fm,
            as_of,
            run.info.run_id,
            folder=cfg.path(cfg.codebook.out),
            progress=progress,
        )
        mlflow.set_tags({"codebook_version": outcome.version, "decision": outcome.promotion.reason})
    health = outcome.trained.codebook.health()
    write_json(
        {
            "version": outcome.version,
            "promoted": outcome.promotion.promoted,
            "promotion_reason": outcome.promotion.reason,
            "items": health.items,
            "items_without_text": outcome.trained.inputs.without_text,
            "items_uncoded": len(outcome.trained.inputs.uncoded),
            "utilisation_per_level": health.utilisation_per_level,
            "entropy_per_level": health.entropy_per_level,
            "collision_rate": health.collision_rate,
            "recon_error": health.recon_error,
        },
        cfg.path(cfg.paths.metrics) / "codebook.json",
    )
    log.info(
        "codebook: %s v%s, %s; %s",
        versions.REGISTERED_MODEL,
        outcome.version,
        health,
        outcome.promotion.reason,
    )
    return outcome


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.codebook.train [--params params.yaml]`."""
    stage_main(train_initial, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
