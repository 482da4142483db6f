"""retrain_speculator at as_of: fit on windows known at as_of, evaluate on the newest days, gate.

Training windows are the `speculation.train_days` before the evaluation span; the evaluation span is the
newest `speculation.eval_days` before as_of (held out). Only events before as_of are read. The run
(MLflow experiment `speculation`, named by as_of) holds precision, coverage and wasted compute of the
served pairs at every budget for the predictor and both baselines, per-window accounting and the
coverage-versus-budget PNG. `specrec-speculator@champion` moves only when the new version beats the
champion on the F1 of coverage and precision at the default budget, both judged on today's span.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

import mlflow
from specrec.clock import to_utc
from specrec.config import Config
from specrec.io import read_parquet
from specrec.registry import CHAMPION, alias_version, metric_key, promote_if_better
from specrec.speculation import evaluate, replay
from specrec.speculation.models import serving_fm, serving_versions
from specrec.speculation.registry import REGISTERED_MODEL, load_version, log_and_register
from specrec.tracking import experiment_id

log = logging.getLogger(__name__)

EXPERIMENT = "speculation"
GATE_METRIC = "f1"


def f1(summary: dict[str, float]) -> float:
    """Harmonic mean of coverage and precision (0 when either is 0)."""
    c, p = summary["coverage"], summary["precision"]
    return 2 * c * p / (c + p) if c + p > 0 else 0.0


def _champion_score(world: replay.World, start_s: int, end_s: int, client: mlflow.MlflowClient) -> str | None:
    """Re-judge the current champion on today's span (so the gate compares like with like); its version."""
    version = alias_version(client, REGISTERED_MODEL, CHAMPION)
    if version is None:
        return None
    champion = load_version(version).predictor
    reqs = world.requests(start_s, end_s)
    span = replay.plan(world, champion, start_s, world.n_windows(start_s, end_s))
    ctx = replay.context(world, reqs, champion, span, world.spec.seed)
    out = replay.simulate(world, reqs, start_s, "predictor", world.spec.budget, ctx)
    score = f1(out.ledger.summary(0.0))
    client.set_model_version_tag(REGISTERED_MODEL, version, f"gate_{metric_key(GATE_METRIC)}", repr(score))
    return version


def retrain_speculator(cfg: Config, as_of: object) -> dict[str, Any]:
    """Fit, evaluate, log, register and gate the speculator at as_of."""
    when, spec = to_utc(as_of), cfg.speculation
    client = mlflow.MlflowClient()
    versions = serving_versions(client)
    fm = serving_fm(cfg, client)  # the bundle's model: the retrieval the predictor learns is served's
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    eval_start = when - pd.Timedelta(days=spec.eval_days)
    train_start = eval_start - pd.Timedelta(days=spec.train_days)
    index = items.loc[items["first_seen"] < eval_start, "item_idx"].to_numpy()
    world = replay.World(fm, events, index, spec, when)
    s_train, s_eval, s_end = (int(t.timestamp()) for t in (train_start, eval_start, when))
    predictor = replay.fit(world, s_train, s_eval)
    result = evaluate.evaluate_span(world, predictor, s_eval, s_end)
    score = f1(result.default)
    champion = _champion_score(world, s_eval, s_end, client)
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=str(when.date())
    ) as run:
        mlflow.set_tags({"kind": "retrain", "as_of": when.isoformat(), "fm_version": versions["fm"]})
        mlflow.log_params({f"speculation.{k}": str(v) for k, v in asdict(spec).items()})
        mlflow.log_params({"train_start": train_start.isoformat(), "eval_start": eval_start.isoformat()})
        mlflow.log_metrics({metric_key(k): v for k, v in predictor.info.items()} | {GATE_METRIC: score})
        evaluate.log_evaluation(result)
        with tempfile.TemporaryDirectory() as tmp:
            version = log_and_register(
                predictor, {k: str(v) for k, v in asdict(spec).items()}, Path(tmp) / "speculator"
            )
    client.set_model_version_tag(REGISTERED_MODEL, version, "fm_version", versions["fm"])
    gate = promote_if_better(client, REGISTERED_MODEL, version, GATE_METRIC, score)
    log.info("speculator v%s at %s: %s; %s", version, when.date(), result.default, gate.reason)
    return {
        "version": version,
        "run_id": run.info.run_id,
        "promoted": gate.promoted,
        "reason": gate.reason,
        "previous_champion": champion,
        GATE_METRIC: score,
        "coverage": result.default.get("coverage", 0.0),
        "precision": result.default.get("precision", 0.0),
        "budgets": result.budgets,
        "requests": result.default.get("requests", 0.0),
    }
