"""Prefect flow `retrain_base(as_of)`: retrain the FM base on events known at as_of, gated on the holdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task

from flows.common import announce_promotion, resolve_as_of, retry_unless_user_error, setup
from specrec.lora.retrain import retrain_base as retrain_and_gate


@task(retries=1, retry_delay_seconds=[15], retry_condition_fn=retry_unless_user_error)
def retrain(params: str, as_of: str, flow_run_id: str, trigger: str) -> dict[str, Any]:
    """Train a new specrec-fm version at as_of; it becomes champion only through the holdout gate."""
    cfg, _ = setup(params)
    return retrain_and_gate(cfg, as_of, flow_run_id, trigger, progress=False)


@flow(name="retrain_base")
def retrain_base(as_of: str, params: str = "params.yaml", trigger: str = "manual") -> dict[str, Any]:
    """Retrain specrec-fm at as_of (trigger: 'manual', 'adwin', ...) and gate it against what serves."""
    as_of = resolve_as_of(as_of, params)
    result = retrain(str(Path(params).resolve()), as_of, str(runtime.flow_run.id or ""), trigger)
    get_run_logger().info(
        "retrain_base %s (%s): specrec-fm v%s promoted=%s, holdout ndcg@10 %.4f vs serving %s %.4f",
        as_of,
        trigger,
        result["version"],
        result["promoted"],
        result["holdout_ndcg@10"],
        result["serving"],
        result["serving_holdout_ndcg@10"],
    )
    if result["promoted"]:
        announce_promotion("specrec-fm", result["version"], as_of)
    return result
