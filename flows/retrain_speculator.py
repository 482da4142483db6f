"""Prefect flow `retrain_speculator(as_of)`: fit the speculation predictor, evaluate, register, gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup
from specrec.speculation.train import retrain_speculator as fit_and_register


@task(retries=2, retry_delay_seconds=[5, 15], retry_condition_fn=retry_unless_user_error)
def fit_speculator(params: str, as_of: str) -> dict[str, Any]:
    """Train on windows known at as_of, evaluate on the newest days, register specrec-speculator, gate it."""
    cfg, _ = setup(params)
    return fit_and_register(cfg, as_of)


@flow(name="retrain_speculator")
def retrain_speculator(as_of: str, params: str = "params.yaml") -> dict[str, Any]:
    """Retrain specrec-speculator at as_of; it becomes champion only if it beats the current one."""
    as_of = resolve_as_of(as_of, params)
    result = fit_speculator(str(Path(params).resolve()), as_of)
    get_run_logger().info(
        "specrec-speculator v%s promoted=%s coverage %.3f precision %.3f (%s)",
        result["version"],
        result["promoted"],
        result["coverage"],
        result["precision"],
        result["reason"],
    )
    return result
