"""Evaluate the speculator over a replayed span: coverage/precision/cost per budget for the predictor and
both baselines, per-window accounting, staleness and (optionally) ranking quality; plot and log it."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from specrec.speculation import replay

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything measured on one span."""

    budgets: list[dict[str, float]]  # one entry per budget (the results shape, plus extras)
    default: dict[str, float]  # the predictor at the default budget: accounting and quality
    per_window: pd.DataFrame  # the predictor at the default budget, per window
    cpu_s_per_pair: float


def evaluate_span(
    world: replay.World,
    predictor: replay.Predictor,
    start_s: int,
    end_s: int,
    scorer: Any = None,
    stats: Any = None,
) -> Evaluation:
    """Replay [start_s, end_s) at every budget for the three strategies; quality at the default budget."""
    spec = world.spec
    reqs = world.requests(start_s, end_s)
    span_plan = replay.plan(world, predictor, start_s, world.n_windows(start_s, end_s))
    replay.prefetch(world, reqs, span_plan, start_s)
    budgets = sorted(set(spec.budgets) | {spec.budget})
    rows, default, per_window, cpu_per_pair = [], {}, pd.DataFrame(), float("nan")
    order = [spec.budget] + [b for b in budgets if b != spec.budget]
    for budget in order:  # the default budget (with FM vectors) measures the CPU cost per pair first
        is_default = budget == spec.budget
        ctx = replay.context(world, reqs, predictor, span_plan, spec.seed) | {"record": is_default}
        out = replay.simulate(world, reqs, start_s, "predictor", budget, ctx, vectors=is_default)
        if is_default:
            cpu_per_pair = out.cpu_s / max(out.pairs_computed, 1)
        ctx["spend"] = out.spend
        recent = replay.simulate(world, reqs, start_s, "recent", budget, ctx)
        rand = replay.simulate(world, reqs, start_s, "random", budget, ctx)
        summary = out.ledger.summary(cpu_per_pair)
        rs, ns = recent.ledger.summary(cpu_per_pair), rand.ledger.summary(cpu_per_pair)
        rows.append(
            {
                "budget": budget,
                "coverage": summary["coverage"],
                "precision": summary["precision"],
                "wasted_cpu_s": summary["wasted_cpu_s"],
                "recent_heuristic_coverage": rs["coverage"],
                "random_coverage": ns["coverage"],
                "pairs": summary["pairs"],
                "recent_heuristic_precision": rs["precision"],
                "recent_heuristic_pairs": rs["pairs"],
                "random_precision": ns["precision"],
            }
        )
        if is_default:
            default = summary | {"cold_start_requests": float(out.cold_requests), "cpu_s": out.cpu_s}
            per_window = out.ledger.per_window()
            if scorer is not None and stats is not None:
                default |= replay.quality(world, reqs, out, scorer, stats)
        log.info(
            "budget %d: predictor %s, recent %.3f, random %.4f",
            budget,
            summary,
            rs["coverage"],
            ns["coverage"],
        )
    return Evaluation(sorted(rows, key=lambda r: r["budget"]), default, per_window, cpu_per_pair)


def curve_png(evaluation: Evaluation, path: Path) -> Path:
    """Coverage versus budget for the predictor and both baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = [r["budget"] for r in evaluation.budgets]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, [r["coverage"] for r in evaluation.budgets], "o-", label="predictor")
    ax.plot(
        b, [r["recent_heuristic_coverage"] for r in evaluation.budgets], "s--", label="active in last window"
    )
    ax.plot(b, [r["random_coverage"] for r in evaluation.budgets], "^:", label="random pairs")
    ax.set_xscale("log")
    ax.set_xlabel("budget (FM pair evaluations per window)")
    ax.set_ylabel("coverage of served pairs")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_evaluation(evaluation: Evaluation, prefix: str = "") -> None:
    """Log totals, the budget table, per-window accounting (step = window) and the curve to the active run."""
    from mlflow.entities import Metric

    import mlflow
    from specrec.registry import metric_key

    # every key, NaN included (e.g. staleness with no hits), so every run has the same metric keys
    mlflow.log_metrics({metric_key(f"{prefix}{k}"): float(v) for k, v in evaluation.default.items()})
    for row in evaluation.budgets:
        b = int(row["budget"])
        mlflow.log_metrics(
            {metric_key(f"{prefix}{k}_b{b}"): float(v) for k, v in row.items() if k != "budget"}
        )
    client, run = mlflow.MlflowClient(), mlflow.active_run()
    assert run is not None
    metrics = []
    for rec in evaluation.per_window.itertuples():
        for name in ("pairs", "used", "requests", "served", "hits", "cpu_s", "coverage", "precision"):
            value = float(getattr(rec, name))
            if np.isfinite(value):
                metrics.append(Metric(f"{prefix}window_{name}", value, 0, int(rec.window)))
    for lo in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[lo : lo + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(curve_png(evaluation, Path(tmp) / "coverage_vs_budget.png")), "plots")
        table = Path(tmp) / "per_window.csv"
        evaluation.per_window.to_csv(table, index=False)
        mlflow.log_artifact(str(table), "accounting")
        mlflow.log_dict(
            {"budgets": evaluation.budgets, "default": evaluation.default}, "accounting/summary.json"
        )
