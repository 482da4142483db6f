"""Speculation benchmark: replay the shipped dataset's replay span and measure the predictor against both
baselines (coverage, precision, wasted compute per budget) and the ranking quality it buys.

Needs the project's trained FM and scorer (`make demo` trains and serves both): it uses the serving
bundle's FM (base + adapter + codes, the model precompute writes rows with) and scorer (or the champions;
`--scorer-version N` evaluates another registered scorer). The predictor is trained on the
`speculation.train_days` before `clock.start` and evaluated on the whole replay (clock.start to the clock's
end), each window using only what was known at its start, every row a miss from the next cycle boundary on
(the daily flows switch the serving bundle there), and with `speculation.trigger: event` (the
default) each (user, second) of events triggering a row with the history through it, readable
`event_delay` later (`--trigger`, `--event-delay` override them). Quality is NDCG@10 over the replayed
requests with per-request paired differences against the scorer without pairs (95% bootstrap
intervals), against two full-FM references: at the request (every earlier event, the issue's upper
bound) and with the history of the request's window start (what the scorer and the precomputed pairs
know). Writes
benchmarks/results/speculation.json (+ _details.json) and logs an MLflow run (experiment `speculation`,
per-window accounting and the coverage-versus-budget PNG).

    python benchmarks/speculation.py [--params params.yaml] [--out benchmarks/results/speculation.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from specrec.clock import ReplayClock  # noqa: E402
from specrec.config import load_config, parse_duration  # noqa: E402
from specrec.errors import SpecrecError  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.online.distill_data import item_stat_table  # noqa: E402
from specrec.speculation import evaluate, replay  # noqa: E402
from specrec.speculation.models import serving_models  # noqa: E402
from specrec.tracking import experiment_id, use_project_store  # noqa: E402


def _finite(value: object) -> object:
    """NaN/inf become null, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def main() -> None:
    """Run the replay and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speculation.json"))
    parser.add_argument(
        "--request-state",
        choices=["window", "event"],
        default=None,
        help="Override speculation.request_state (event: per-event streaming user state, a sensitivity run).",
    )
    parser.add_argument(
        "--window",
        default=None,
        help="Override speculation.window (e.g. 30s: precompute every 30 seconds; the cadence sweep).",
    )
    parser.add_argument(
        "--trigger",
        choices=["window", "event"],
        default=None,
        help="Override speculation.trigger (event: also precompute after each event, event_delay later).",
    )
    parser.add_argument("--event-delay", default=None, help="Override speculation.event_delay (e.g. 5s).")
    parser.add_argument("--ttl", default=None, help="Override speculation.ttl (e.g. 1h).")
    parser.add_argument(
        "--budget", type=int, default=None, help="Override speculation.budget (FM pairs per window)."
    )
    parser.add_argument(
        "--activity-horizon", default=None, help="Override speculation.activity_horizon (e.g. 6h)."
    )
    parser.add_argument(
        "--bare-fm",
        action="store_true",
        help="Replay with the bundle's bare base FM (no adapter, no codes), not the model serving uses.",
    )
    parser.add_argument(
        "--scorer-version",
        default=None,
        help="Evaluate this registered specrec-scorer version instead of the serving bundle's.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    cfg = load_config(args.params)
    use_project_store(cfg.root)
    if args.request_state:
        cfg = dataclasses.replace(
            cfg, speculation=dataclasses.replace(cfg.speculation, request_state=args.request_state)
        )
    overrides = {
        key: value
        for key, value in (
            ("window", args.window),
            ("trigger", args.trigger),
            ("event_delay", args.event_delay),
            ("ttl", args.ttl),
            ("activity_horizon", args.activity_horizon),
            ("budget", args.budget),
        )
        if value
    }
    if overrides:  # checked as params.yaml is: durations, at most speculation.ttl
        try:
            spec = dataclasses.replace(cfg.speculation, **overrides)
        except SpecrecError as e:
            raise SystemExit(f"error: {e}") from None
        cfg = dataclasses.replace(cfg, speculation=spec)
    spec, clock = cfg.speculation, ReplayClock.from_config(cfg.clock)
    started = time.perf_counter()
    fm, scorer, versions = serving_models(cfg, mlflow.MlflowClient(), args.scorer_version, args.bare_fm)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    start, end = clock.start, clock.end
    index = items.loc[items["first_seen"] < start, "item_idx"].to_numpy()
    # the daily flows serve a new bundle each cycle: rows do not outlive the cycle they were written in
    switches = [int(c.start.timestamp()) for c in clock.cycles()[1:]]
    world = replay.World(fm, events, index, spec, end, switches)
    s0, e0 = int(start.timestamp()), int(end.timestamp())
    predictor = replay.fit(world, s0 - spec.train_days * 86400, s0)
    cadence = parse_duration("clock.cadence", cfg.clock.cadence)
    tables: dict[int, np.ndarray] = {}

    def stats(t: int) -> np.ndarray:
        k = int((pd.Timestamp(t, unit="s", tz="UTC") - start) // cadence)
        if k not in tables:
            at = start + k * cadence
            tables[k] = item_stat_table(events[events["timestamp"] < at], items, at, cadence)
        return tables[k]

    result = evaluate.evaluate_span(world, predictor, s0, e0, scorer, stats)
    seconds = time.perf_counter() - started
    command = " ".join(["python", "benchmarks/speculation.py", *sys.argv[1:]])
    d = result.default
    out = {
        "budgets": [
            {
                k: r[k]
                for k in (
                    "budget",
                    "coverage",
                    "precision",
                    "wasted_cpu_s",
                    "recent_heuristic_coverage",
                    "random_coverage",
                )
            }
            for r in result.budgets
        ],
        "at_default_budget": {
            "coverage": d["coverage"],
            "precision": d["precision"],
            "ndcg@10_with": d["ndcg@10_with"],
            "ndcg@10_without": d["ndcg@10_without"],
            "ndcg@10_full_fm": d["ndcg@10_full_fm"],
            # (with - without) / (full_fm - without); null when the full FM gains nothing over "without"
            "quality_recovered": d["quality_recovered"] if np.isfinite(d["quality_recovered"]) else None,
            "quality_requests": d["quality_requests"],
            # the ratio when a row older than the user's newest event is a miss (the scorer's path
            # without pairs): what a freshness check on the request path would serve
            "ndcg@10_with_current_rows": d["ndcg@10_with_current"],
            "quality_recovered_current_rows": _finite(d["quality_recovered_current_rows"]),
            # hit pairs whose row's FM saw every event before the request, and the mean events rows missed
            "hits_with_request_history": _finite(d["hits_with_request_history"]),
            "hit_events_behind_mean": _finite(d["hit_events_behind_mean"]),
            # the full FM with the history of the request's window start (the scorer's and the rows')
            "ndcg@10_full_fm_window_start": d["ndcg@10_full_fm_window"],
            "quality_recovered_window_start": _finite(d["quality_recovered_window_start"]),
            # the same scorer with the FM's pair vector on every candidate: computed at the request, and
            # with the window start's history (what 100% coverage would give; speculation's own ceiling)
            "ndcg@10_all_pairs": d["ndcg@10_all_pairs"],
            "ndcg@10_all_pairs_window_start": d["ndcg@10_all_pairs_window"],
            "quality_recovered_of_all_pairs": _finite(d["quality_recovered_of_all_pairs"]),
            "quality_recovered_of_all_pairs_window_start": _finite(
                d["quality_recovered_of_all_pairs_window"]
            ),
            # 95% bootstrap intervals of the four ratios (the same request resamples; null: undefined)
            "quality_recovered_ci95": {
                key: _finite([d[f"{key}_ci_low"], d[f"{key}_ci_high"]]) for key in replay.RATIOS
            },
            # per-request paired NDCG@10 differences: mean and 95% bootstrap interval over requests
            "paired_differences": {
                f"{a} - {b}": [d[f"ndcg@10_{a}_minus_{b}{end}"] for end in ("", "_ci_low", "_ci_high")]
                for a, b in replay.PAIRED
            },
        },
        "command": command,
    }
    details = {
        "default_budget": spec.budget,
        "window": spec.window,
        "ttl": spec.ttl,
        "candidates": spec.candidates,
        "request_state": spec.request_state,
        "trigger": spec.trigger,
        "event_delay": spec.event_delay,
        "replay": [start.isoformat(), end.isoformat()],
        "models": versions,
        "predictor": predictor.info,
        "default": d,
        "budgets": result.budgets,
        "cpu_s_per_pair": result.cpu_s_per_pair,
        "seconds": seconds,
    }
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, "speculation"), run_name=f"benchmark-{start.date()}"
    ):
        mlflow.set_tags(
            {
                "kind": "benchmark",
                "as_of": start.isoformat(),
                **{f"model_{k}": v for k, v in versions.items()},
            }
        )
        mlflow.log_params({f"speculation.{k}": str(v) for k, v in vars(spec).items()})
        evaluate.log_evaluation(result)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    path.with_name(path.stem + "_details.json").write_text(json.dumps(_finite(details), indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(
        f"replay of {int(d['requests'])} requests in {seconds:.0f} s; "
        f"details in {path.with_name(path.stem + '_details.json')}"
    )


if __name__ == "__main__":
    main()
