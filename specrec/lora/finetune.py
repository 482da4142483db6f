"""One daily cycle: train a LoRA adapter on specrec-fm@champion, judge it on the newest events, gate it.

At `as_of` the cycle's events (the last `clock.cadence`) are split in time: the newest `lora.holdout_share`
are the holdout, the rest are trained on together with an experience-replay sample of older history.
The challenger (the new adapter), the champion adapter (on its own base) and the bare base are scored on
the holdout (NDCG@10, HR@10); the challenger becomes `specrec-fm-adapter@champion` only when it is not
worse than the champion and the bare base (tolerance `lora.tolerance`). A cycle with too few new events
is skipped with its reason. Every cycle is one MLflow run in `lora-finetune` named by as_of, with the
same metric keys (NaN where a value does not apply), tagged with the base version and the flow run id.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from peft import PeftModel

import mlflow
from models import lora
from models.hstu import HSTU
from specrec.clock import Cycle, EventLog, ReplayClock, to_utc
from specrec.config import Config, parse_duration
from specrec.io import read_parquet
from specrec.lora import adapters
from specrec.lora.data import CycleData, cycle_data
from specrec.lora.evaluate import HoldoutScore, paired_interval, score, target_users
from specrec.registry import metric_key
from specrec.tracking import experiment_id

log = logging.getLogger(__name__)

EXPERIMENT = "lora-finetune"
VARIANTS = ("challenger", "champion", "base")
# Every run logs exactly these keys (NaN where not applicable) so the compare view lines runs up.
METRIC_KEYS = (
    *(f"{v}_{metric_key(m)}" for v in VARIANTS for m in ("ndcg@10", "hr@10")),
    "new_events",
    "holdout_events",
    "new_item_rows",
    "adapter_item_rows",
    "replay_targets",
    "train_targets",
    "train_loss",
    "train_cpu_s",
    "val_users",
    "val_ndcg_at_10",
    "val_ndcg_at_10_by_epoch",  # a value per epoch (step) where validation ran, else NaN
    "epochs_trained",
    "best_epoch",
    "skipped",
    "promoted",
    # the gate's evidence: challenger minus what served (champion, else the bare base) on the holdout,
    # with a 95% interval over the holdout's users resampled (NaN when no challenger was trained)
    "holdout_users",
    "gate_diff_ndcg_at_10",
    "gate_diff_ci_low",
    "gate_diff_ci_high",
)


@dataclass
class CycleOutcome:
    """What a cycle did, and the per-event errors of the model that served before it (the drift input)."""

    as_of: str
    status: str  # 'skipped' | 'promoted' | 'rejected'
    reason: str
    run_id: str
    base_version: str
    adapter_version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    serving_errors: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (without the per-event errors)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "serving_errors"}


def cycle_at(cfg: Config, as_of: object) -> Cycle:
    """The cycle ending at as_of: the clock's when as_of is a boundary, else the last cadence before it."""
    when, cadence = to_utc(as_of), parse_duration("clock.cadence", cfg.clock.cadence)
    clock = ReplayClock.from_config(cfg.clock)
    k = (when - clock.start) / cadence
    index = int(k) if k == int(k) and 1 <= k <= clock.n_cycles else 0
    return Cycle(index, when - cadence, when)


def known_events(cfg: Config, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every prepared event strictly before as_of (a log cut at as_of: later events are not even loaded)."""
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    return EventLog(events).as_of(as_of).known_at(as_of)


def spec(cfg: Config, new_items: Sequence[int], cycle_items: Sequence[int] = ()) -> lora.AdapterSpec:
    """The adapter spec from params.yaml's lora section and this cycle's new (and, with
    lora.cycle_item_rows, every trained-on) items."""
    lc = cfg.lora
    rows = set(new_items) if lc.new_item_rows else set()
    rows |= set(cycle_items) if lc.cycle_item_rows else set()
    return lora.AdapterSpec(tuple(lc.target_modules), lc.r, lc.alpha, lc.dropout, tuple(sorted(rows)))


def train_adapter(
    cfg: Config,
    base: HSTU,
    data: CycleData,
    warm_from: PeftModel | None = None,
    progress: bool = True,
) -> tuple[PeftModel, lora.FinetuneResult]:
    """A new adapter on `base` trained on the cycle's windows, optionally warm-started from `warm_from`."""
    lc = cfg.lora
    model = lora.wrap(base, spec(cfg, data.new_items, data.cycle_items), lc.seed)
    if warm_from is not None:
        lora.warm_start(model, warm_from)
    val_events, val_span = data.val_events, data.val_span

    def validate(m: PeftModel) -> float:
        assert val_events is not None and val_span is not None
        return score(m, val_events, val_span, base.config.max_len).ndcg

    result = lora.finetune(
        model,
        data.windows,
        lc.epochs,
        lc.lr,
        lc.batch_size,
        lc.weight_decay,
        lc.loss,
        lc.seed,
        progress,
        by_length=lc.batch_by_length,
        validate=validate if val_events is not None and len(val_events) else None,
        patience=lc.patience,
        n_uniform=cfg.fm.train.n_uniform_negatives,
        n_inbatch=cfg.fm.train.n_inbatch_negatives,
        schedule=lc.lr_schedule,
    )
    return model, result


def _metrics(
    cfg: Config, scores: dict[str, HoldoutScore | None], data: CycleData, holdout_users: int
) -> dict[str, float]:
    """The fixed metric keys; NaN for what this cycle did not produce."""
    out = dict.fromkeys(METRIC_KEYS, math.nan)
    for variant, s in scores.items():
        if s is not None:
            out |= {f"{variant}_{metric_key(m)}": s.metrics[m] for m in ("ndcg@10", "hr@10")}
    return out | {
        "new_events": float(data.new_events),
        "holdout_events": float(data.holdout_events),
        "new_item_rows": float(len(data.new_items)),
        # rows of the item table the adapter trains: new items, and with lora.cycle_item_rows every
        # item the cycle trained on
        "adapter_item_rows": float(len(spec(cfg, data.new_items, data.cycle_items).token_rows)),
        "replay_targets": float(data.replay_targets),
        "train_targets": float(sum(w.n_targets for w in data.windows)),
        "val_users": float(len(data.val_users)),
        "holdout_users": float(holdout_users),
    }


def _skip_reason(cfg: Config, data: CycleData, base_score: HoldoutScore | None) -> str | None:
    """Why the cycle cannot train (or be judged), or None."""
    if data.new_events == 0:
        return "no new events in the cycle's training window"
    if data.new_events < cfg.lora.min_events:
        return f"{data.new_events} new events < lora.min_events = {cfg.lora.min_events}"
    if not data.new_windows:
        return "the new events have no targets (every new event is its user's first)"
    if base_score is None or not base_score.errors:
        return f"none of the {data.holdout_events} holdout events has a history to score"
    return None


def run_cycle(
    cfg: Config,
    as_of: object,
    flow_run_id: str = "",
    warm_start: bool | None = None,
    progress: bool = True,
) -> CycleOutcome:
    """Train, evaluate, log, register and gate one daily adapter at as_of (MLflow must point at the store)."""
    lc, client = cfg.lora, mlflow.MlflowClient()
    cycle = cycle_at(cfg, as_of)
    base, base_version = adapters.load_base(client)
    champion = adapters.champion_adapter(client, base_version)  # None when it adapts another base
    known = known_events(cfg, cycle.as_of)
    data = cycle_data(
        known,
        cycle,
        adapters.base_cutoff(client, base_version),
        base.config.max_len,
        lc.holdout_share,
        lc.replay_share,
        lc.seed,
        lc.supervise,
        lc.val_share,
        lc.train_since,
    )
    max_len = base.config.max_len
    serving_base = score(base, known, data.holdout, max_len)
    scores: dict[str, HoldoutScore | None] = {
        "base": serving_base,
        "champion": None
        if champion is None
        else score(champion.model, known, data.holdout, champion.base.config.max_len),
        "challenger": None,
    }
    serving = scores["champion"] or scores["base"]
    assert serving is not None
    holdout_users = target_users(known, data.holdout)  # the user of each scored holdout event
    n_users = len(np.unique(holdout_users))
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=cycle.name) as run:
        mlflow.set_tags(
            {
                "as_of": cycle.as_of.isoformat(),
                "base_version": base_version,
                "prefect_flow_run_id": flow_run_id,
                "champion_adapter": champion.version if champion else "",
                "holdout_start": data.holdout.start.isoformat(),
            }
        )
        mlflow.log_params({f"lora.{k}": v for k, v in dataclasses.asdict(lc).items() if k != "drift"})
        reason = _skip_reason(cfg, data, scores["base"])
        if reason is not None:
            metrics = _metrics(cfg, scores, data, n_users) | {"skipped": 1.0, "promoted": 0.0}
            mlflow.log_metrics(metrics)
            mlflow.set_tags({"status": "skipped", "reason": reason})
            log.info("lora %s: skipped (%s)", cycle.name, reason)
            return CycleOutcome(
                cycle.name, "skipped", reason, run.info.run_id, base_version, None, metrics, serving.errors
            )
        use_warm = lc.warm_start if warm_start is None else warm_start
        warm = champion.model if use_warm and champion else None
        mlflow.set_tag("warm_start_from", champion.version if warm is not None and champion else "")
        model, result = train_adapter(cfg, base, data, warm, progress)
        for epoch, loss in enumerate(result.losses, start=1):
            mlflow.log_metric("train_loss", loss, step=epoch)
        for epoch, value in enumerate(result.val_scores, start=1):
            mlflow.log_metric("val_ndcg_at_10_by_epoch", value, step=epoch)
        challenger = scores["challenger"] = score(model, known, data.holdout, max_len)
        low, high = paired_interval(serving, challenger, holdout_users)
        diff = challenger.ndcg - serving.ndcg
        against = "champion" if scores["champion"] else "bare base"
        evidence = (
            f"challenger - {against} NDCG@10 {diff:+.5f}, 95% CI [{low:+.5f}, {high:+.5f}] over "
            f"{len(holdout_users)} holdout events of {n_users} users"
        )
        metrics = _metrics(cfg, scores, data, n_users) | {
            "gate_diff_ndcg_at_10": diff,
            "gate_diff_ci_low": low,
            "gate_diff_ci_high": high,
            "train_loss": result.losses[-1],
            "train_cpu_s": result.cpu_seconds,
            "epochs_trained": float(len(result.losses)),
            "best_epoch": float(result.best_epoch),
            "skipped": 0.0,
        }
        if result.val_scores:
            metrics["val_ndcg_at_10"] = result.val_scores[result.best_epoch - 1]
        version = adapters.register_adapter(
            client,
            model,
            run.info.run_id,
            {
                "base_version": base_version,
                "as_of": cycle.as_of.isoformat(),
                "holdout_start": data.holdout.start.isoformat(),
            },
        )
        decision = adapters.gate(
            client,
            adapters.ADAPTER_MODEL,
            version,
            lc.promote_metric,
            challenger.metrics[lc.promote_metric],
            # the champion alias may hold an adapter of an older base that no longer serves: then the
            # bare base is what serves and what the challenger has to beat
            (scores["champion"] or serving_base).metrics[lc.promote_metric],
            serving_base.metrics[lc.promote_metric],
            lc.tolerance,
        )
        metrics["promoted"] = float(decision.promoted)
        # logged per epoch above (the validation curve only where validation ran)
        by_epoch = {"train_loss"} | ({"val_ndcg_at_10_by_epoch"} if result.val_scores else set())
        mlflow.log_metrics({k: v for k, v in metrics.items() if k not in by_epoch})
        status = "promoted" if decision.promoted else "rejected"
        tags = {"status": status, "reason": decision.reason, "adapter_version": version}
        mlflow.set_tags(tags | {"gate_evidence": evidence})
    name = adapters.ADAPTER_MODEL
    log.info("lora %s: %s v%s %s (%s; %s)", cycle.name, name, version, status, decision.reason, evidence)
    return CycleOutcome(
        cycle.name, status, decision.reason, run.info.run_id, base_version, version, metrics, serving.errors
    )
