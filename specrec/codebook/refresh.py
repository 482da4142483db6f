"""codebook_refresh(as_of): code the items first seen since the last run, watch drift, retrain on a threshold.

1. Load `specrec-codebook@champion` with every semantic ID it has handed out.
2. Items first seen before as_of that hold no ID yet are coded with the frozen codebook (existing IDs
   never change; collision indices continue from the ones taken).
3. Drift of all items coded since the codebook was trained against its reference items (health.drift).
4. Only when a threshold in params.yaml `codebook.drift` is crossed: train a challenger on the whole
   catalogue known at as_of (with the FM champion), align its code numbering to the champion's (remap),
   record stability, register it and run the gate; the remap table (old -> new ID per item) is logged.
5. Health of the serving codebook, the new items' health and the drift go to MLflow `codebook-refresh`
   (run named by the as_of date), with a per-level utilisation/entropy plot.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlflow import MlflowClient
from specrec.clock import to_utc
from specrec.codebook import health as hl
from specrec.codebook import versions
from specrec.codebook.build import Codebook, FMInfo, Inputs, build_inputs
from specrec.codebook.serving import fm_info
from specrec.codebook.train import known_items, run_params, train_and_register
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.registry import CHAMPION, alias_version
from specrec.tracking import experiment_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did."""

    as_of: str
    version: str  # the champion codebook after the run
    previous_version: str
    new_items: int  # coded in this run
    without_text: int  # of those, coded from the collaborative embedding alone
    uncoded: int  # items with neither text nor a trained FM embedding
    drift: dict[str, float]
    reasons: list[str]
    retrained: bool
    promoted: bool
    challenger: str | None
    stability: dict[str, float]
    health: dict[str, float]
    run_id: str
    semantic_ids: dict[int, list[int]] = field(default_factory=dict)  # item_id -> ID, items coded now

    def summary(self) -> dict[str, Any]:
        """The result without the per-item IDs (for logs and flow results)."""
        return {k: v for k, v in self.__dict__.items() if k != "semantic_ids"}


def _fm(cfg: Config, client: MlflowClient, version: str) -> FMInfo | None:
    """The registered FM version as codebook input ('' = the codebook was built without an FM)."""
    return fm_info(client, version, cfg.clock.start) if version else None


def _codes(rows: pd.DataFrame, levels: int) -> np.ndarray:
    """(N, L) codes of table rows."""
    return np.stack(rows["sid"].to_list())[:, :levels] if len(rows) else np.zeros((0, levels), np.int64)


def reference_view(codebook: Codebook, ref: Inputs, since: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Codes and errors of the reference items seen with the parts most new items have.

    New items are mostly cold (no trained FM embedding: coded from text alone) while the reference was
    coded from both parts; comparing them directly would always look like drift. So the reference is
    re-coded with the same parts hidden, and like is compared with like.
    """
    has_collab = (since["source"] != "content").mean() >= 0.5 if len(since) else True
    has_text = (since["source"] != "collab").mean() >= 0.5 if len(since) else True
    mask = ref.mask & torch.tensor([has_text, has_collab])
    keep = mask.any(dim=1)
    model = codebook.model
    return model.encode(ref.x[keep], mask[keep]).numpy(), model.item_errors(ref.x[keep], mask[keep]).numpy()


def measure_drift(cfg: Config, codebook: Codebook, ref: Inputs, fm_changed: bool) -> hl.Drift:
    """Drift of the items coded since training against the reference items (like with like)."""
    since = codebook.table[~codebook.table["reference"]]
    ref_codes, ref_errors = reference_view(codebook, ref, since)
    return hl.drift(
        ref_codes,
        ref_errors,
        _codes(since, codebook.levels),
        since["recon_error"].to_numpy(),
        codebook.codebook_size,
        cfg.codebook.drift,
        fm_changed,
    )


def _plot(health: hl.Health, codebook_size: int, path: Path) -> Path:
    """Per-level utilisation and normalised entropy as a PNG (the hourglass shows as a dip)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.arange(1, len(health.utilisation_per_level) + 1)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(levels - 0.2, health.utilisation_per_level, 0.4, label="utilisation")
    ax.bar(
        levels + 0.2, np.array(health.entropy_per_level) / np.log2(codebook_size), 0.4, label="entropy/log2 K"
    )
    ax.set_xlabel("level")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(levels)
    ax.legend(loc="lower right")
    ax.set_title(f"codebook health ({health.items} items)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _log_remap(old: Codebook, new: Codebook) -> None:
    """Log old -> new semantic ID of every item both versions coded."""
    import mlflow

    merged = old.table[["item_id", "sid"]].merge(
        new.table[["item_id", "sid"]], on="item_id", suffixes=("_old", "_new")
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "remap.parquet"
        merged.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), "remap")


def _metric_keys(levels: int) -> set[str]:
    """The keys of a refresh run that retrains; a run that does not gets NaN for the ones it lacks, so every
    run has the same metric keys (MLflow's compare view lines runs up by cycle)."""
    health = set(hl.Health(0, [0.0] * levels, [0.0] * levels, 0.0, 0.0).metrics())
    depths = range(1, levels + 1)
    stability = {"stability_items"} | {f"{p}prefix_changed_d{d}" for p in ("", "raw_") for d in depths}
    retrain = health | stability | {"items_without_text", "items_uncoded", "train_loss"}
    return health | stability | {f"retrain_{k}" for k in retrain}


def refresh(cfg: Config, as_of: object, client: MlflowClient, progress: bool = False) -> RefreshResult:
    """One refresh at as_of (see the module docstring); logs one run to MLflow `codebook-refresh`."""
    import mlflow

    when = to_utc(as_of)
    version = versions.champion_version(client)
    if version is None:
        raise SpecrecError(
            f"no {versions.REGISTERED_MODEL}@champion in the MLflow registry: train the initial codebook "
            "first (`dvc repro codebook` or `specrec codebook train`)."
        )
    previous_version = version
    codebook = versions.load_version(client, version)
    fm = _fm(cfg, client, codebook.meta.get("fm_version", ""))
    items = known_items(cfg, when)
    new = items[~items["item_id"].isin(codebook.table["item_id"])]
    inputs = build_inputs(cfg, new, fm)
    rows = codebook.assign(inputs, when, reference=False)
    fm_champion = alias_version(client, "specrec-fm", CHAMPION) or ""
    fm_changed = fm is not None and bool(fm_champion) and fm_champion != fm.version
    reference = codebook.table[codebook.table["reference"]]
    ref_inputs = build_inputs(cfg, items[items["item_id"].isin(reference["item_id"])], fm)
    drift = measure_drift(cfg, codebook, ref_inputs, fm_changed)
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, versions.EXPERIMENT), run_name=str(when.date())
    ) as run:
        mlflow.set_tags({"as_of": when.isoformat(), "stage": "refresh", "codebook_version": version})
        mlflow.log_params(run_params(cfg))
        counts = {"new_items": len(rows), "items_without_text": inputs.without_text}
        mlflow.log_metrics(
            {k: float(v) for k, v in counts.items()} | {"items_uncoded": float(len(inputs.uncoded))}
        )
        mlflow.log_metrics(drift.metrics() | codebook.health(rows).metrics("new_"))
        retrained, promoted, challenger = False, False, None
        stability = {f"prefix_changed_d{d}": 0.0 for d in range(1, codebook.levels + 1)}
        serving = codebook
        if drift.retrain:
            log.info("codebook %s drifted (%s): retraining", version, "; ".join(drift.reasons))
            new_fm = _fm(cfg, client, fm_champion) if fm_champion else fm
            outcome = train_and_register(
                cfg, client, items, new_fm, when, run.info.run_id, codebook, fm, progress=progress
            )
            retrained, challenger, promoted = True, outcome.version, outcome.promotion.promoted
            stability = outcome.trained.stability or stability
            if promoted:
                _log_remap(codebook, outcome.trained.codebook)
                serving, version = outcome.trained.codebook, outcome.version
            mlflow.set_tags({"challenger": outcome.version, "decision": outcome.promotion.reason})
        versions.log_table(client, serving, version, run.info.run_id, when.isoformat())
        health = serving.health()
        mlflow.log_metrics(health.metrics() | stability)
        mlflow.log_metric("prefix_changed", stability[f"prefix_changed_d{cfg.codebook.stability_prefix}"])
        missing = _metric_keys(codebook.levels) - set(client.get_run(run.info.run_id).data.metrics)
        mlflow.log_metrics(dict.fromkeys(sorted(missing), float("nan")))  # what only a retrain measures
        mlflow.set_tags({"serving_codebook_version": version, "retrained": str(retrained)})
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(_plot(health, serving.codebook_size, Path(tmp) / "health.png")), "plots")
    coded = serving.table.set_index("item_id")
    ids = {int(i): coded.loc[i, "sid"].tolist() for i in rows["item_id"] if i in coded.index}
    return RefreshResult(
        when.isoformat(),
        version,
        previous_version,
        len(rows),
        inputs.without_text,
        len(inputs.uncoded),
        drift.metrics(),
        drift.reasons,
        retrained,
        promoted,
        challenger,
        stability,
        health.metrics(),
        run.info.run_id,
        ids,
    )
