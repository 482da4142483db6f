"""MLflow model-registry helpers: versions, aliases and the champion/challenger gate.

Registered models are named as in DESIGN.md (`specrec-fm`, ...). Aliases replace stages: `champion`
is the best validated version, `serving` the bundle being served. A version carries the metric it was
judged on as a tag, so the gate compares like with like and the decision is recorded on the version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from mlflow import MlflowClient
from specrec.errors import SpecrecError

log = logging.getLogger(__name__)

CHAMPION = "champion"
SERVING = "serving"


def metric_key(name: str) -> str:
    """An MLflow-safe metric name: 'ndcg@10' -> 'ndcg_at_10' (MLflow does not allow '@')."""
    return name.replace("@", "_at_")


@dataclass(frozen=True)
class Promotion:
    """What the gate decided for a challenger version."""

    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    challenger_score: float
    champion_score: float | None


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _score(client: MlflowClient, name: str, version: str, tag: str) -> float:
    """The gate metric recorded on a version."""
    value = client.get_model_version(name, version).tags.get(tag)
    if value is None:
        raise SpecrecError(
            f"registered model {name} version {version} has no tag {tag!r}: it was not "
            "registered by specrec's gate; re-register it or move the alias by hand."
        )
    return float(value)


def promote_if_better(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    score: float,
    tolerance: float = 0.0,
    alias: str = CHAMPION,
) -> Promotion:
    """Record `score` on the version; move `alias` to it when it beats the current holder by > -tolerance."""
    tag = f"gate_{metric_key(metric)}"
    client.set_model_version_tag(name, version, tag, repr(float(score)))
    current = alias_version(client, name, alias)
    if current is None or current == version:
        decision = Promotion(
            True, f"no {alias} yet" if current is None else f"already {alias}", version, current, score, None
        )
    else:
        best = _score(client, name, current, tag)
        better = score > best - tolerance if tolerance > 0 else score > best
        reason = (
            f"{metric} {score:.5f} {'beats' if better else 'does not beat'} {alias} v{current} "
            f"({best:.5f}, tolerance {tolerance})"
        )
        decision = Promotion(better, reason, version, current, score, best)
    if decision.promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(
        name, version, "gate_decision", "promoted" if decision.promoted else "rejected"
    )
    client.set_model_version_tag(name, version, "gate_reason", decision.reason)
    log.info(
        "%s v%s: %s (%s)", name, version, "promoted" if decision.promoted else "rejected", decision.reason
    )
    return decision
