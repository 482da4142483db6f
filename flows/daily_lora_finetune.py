"""Prefect flow `daily_lora_finetune(as_of)`: the daily adapter, its gate, and ADWIN drift -> `retrain_base`.

Tasks: fine-tune and gate (specrec.lora.finetune.run_cycle, one MLflow run in `lora-finetune`), then the
drift check (ADWIN over the serving model's per-event holdout errors, state kept in `lora.drift.state`);
an alarm runs `retrain_base(as_of)` as a subflow and starts a new ADWIN window. The alarm, ADWIN's
statistic and the decision are logged to the cycle's MLflow run and the flow log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task

from flows.common import announce_promotion, resolve_as_of, retry_unless_user_error, setup
from flows.retrain_base import retrain_base
from specrec.lora.drift import DriftMonitor
from specrec.lora.finetune import run_cycle


@task(retries=2, retry_delay_seconds=[5, 15], retry_condition_fn=retry_unless_user_error)
def finetune(params: str, as_of: str, flow_run_id: str, warm_start: bool | None) -> dict[str, Any]:
    """Train, evaluate, register and gate the cycle's adapter (or skip the cycle with its reason)."""
    cfg, _ = setup(params)
    out = run_cycle(cfg, as_of, flow_run_id, warm_start, progress=False)
    return out.summary() | {"serving_errors": out.serving_errors}


@task
def check_drift(params: str, as_of: str, errors: list[float], run_id: str) -> dict[str, Any]:
    """Feed the cycle's per-event errors to ADWIN; log alarm, statistic and decision to the cycle's run."""
    cfg, client = setup(params)
    monitor = DriftMonitor(cfg.lora.drift, cfg.path(cfg.lora.drift.state))
    result = monitor.check(as_of, errors, cfg.lora.seed)
    for key, value in result.metrics().items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "drift_decision", result.decision)
    return result.metrics() | {"decision": result.decision, "alarm": result.alarm}


@task
def reset_drift(params: str, as_of: str, reason: str) -> None:
    """Start a new ADWIN window after the base was retrained."""
    cfg, _ = setup(params)
    DriftMonitor(cfg.lora.drift, cfg.path(cfg.lora.drift.state)).reset(as_of, reason)


@flow(name="daily_lora_finetune")
def daily_lora_finetune(
    as_of: str, params: str = "params.yaml", warm_start: bool | None = None
) -> dict[str, Any]:
    """One daily cycle at as_of; warm_start None = lora.warm_start from params.yaml."""
    as_of = resolve_as_of(as_of, params)
    logger, p = get_run_logger(), str(Path(params).resolve())
    cycle = finetune(p, as_of, str(runtime.flow_run.id or ""), warm_start)
    logger.info(
        "lora %s: %s (%s); challenger/champion/base holdout ndcg@10 %s/%s/%s",
        as_of,
        cycle["status"],
        cycle["reason"],
        *(f"{cycle['metrics'][f'{v}_ndcg_at_10']:.4f}" for v in ("challenger", "champion", "base")),
    )
    if cycle["status"] == "promoted":
        announce_promotion("specrec-fm-adapter", cycle["adapter_version"], as_of)
    drift = check_drift(p, as_of, cycle.pop("serving_errors"), cycle["run_id"])
    logger.info(
        "drift %s: alarm=%s, window mean %.4f -> %.4f, width %d -> %d, cycle error %.4f; decision %s",
        as_of,
        drift["alarm"],
        drift["drift_mean_before"],
        drift["drift_mean_after"],
        drift["drift_width_before"],
        drift["drift_width_after"],
        drift["drift_cycle_error"],
        drift["decision"],
    )
    result: dict[str, Any] = {"cycle": cycle, "drift": drift, "retrain": None}
    if drift["alarm"]:
        result["retrain"] = retrain_base(as_of=as_of, params=p, trigger="adwin")
        reset_drift(p, as_of, f"retrain_base specrec-fm v{result['retrain']['version']}")
    return result
