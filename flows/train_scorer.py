"""Prefect flow `train_scorer(as_of)`: distil the thin online scorer from the champion FM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import announce_promotion, resolve_as_of, retry_unless_user_error, setup
from specrec.online.train_scorer import train_scorer as distil_and_register


@task(retries=2, retry_delay_seconds=[5, 15], retry_condition_fn=retry_unless_user_error)
def distil(params: str, as_of: str) -> dict[str, Any]:
    """Build examples at as_of, train, evaluate on the holdout, register and gate specrec-scorer."""
    cfg, _ = setup(params)
    return distil_and_register(cfg, as_of)


@flow(name="train_scorer")
def train_scorer(as_of: str, params: str = "params.yaml") -> dict[str, Any]:
    """Train specrec-scorer at as_of; it becomes champion only if it beats the current one."""
    as_of = resolve_as_of(as_of, params)
    result = distil(str(Path(params).resolve()), as_of)
    get_run_logger().info(
        "specrec-scorer v%s promoted=%s holdout ndcg@10 without/with pair %.4f/%.4f",
        result["version"],
        result["promoted"],
        result["without_pair_ndcg@10"],
        result["with_pair_ndcg@10"],
    )
    if result["promoted"]:
        announce_promotion("specrec-scorer", result["version"], as_of)
    return result
