"""`specrec replay --cycles N`: drive N cycles from the clock and measure the real scorer after each.

Cycle k: `run_cycle(as_of_k)` (the Prefect flow: adapter, codebook, speculator, bundle, user state,
precompute), then the events of the next cadence [as_of_k, as_of_k + cadence), what the system built at
as_of_k is asked for, are sent as requests to the scorer running as a real HTTP server on loopback.
Whole speculation windows are replayed; each starts, as the 5-minute deployments would in operation,
with update_user_state and speculative_precompute at the window's start. The scorer's clock is the
simulated event time (speculative rows expire against it, not against the wall clock). One MLflow run
per cycle in experiment `replay`: named by the cycle, tag `as_of`, exactly traffic.METRIC_KEYS, and the
raw latency summary as `replay/summary.json`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from tqdm import tqdm

import mlflow
from specrec.clock import Cycle, EventLog
from specrec.config import Config, parse_duration
from specrec.io import read_parquet
from specrec.replay.cycle import check_cycles, done_run
from specrec.replay.traffic import Tally, Window, sample_windows
from specrec.tracking import experiment_id, use_project_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

EXPERIMENT = "replay"


class SimClock:
    """The scorer's `now`: the replayed event's time (epoch seconds), set before each request."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def next_events(events: pd.DataFrame, cycle: Cycle) -> pd.DataFrame:
    """The events of the cadence after the cycle's as_of: what the cycle's models are asked for."""
    return EventLog(events).between(cycle.as_of, cycle.as_of + (cycle.as_of - cycle.start))


def _nearline_tick(cfg: Config, store: FeatureStore, client: mlflow.MlflowClient, start: pd.Timestamp) -> int:
    """What the 5-minute deployments do at a window's start: user states, then the precompute."""
    from specrec.nearline import bundles
    from specrec.nearline.user_state import update_user_state
    from specrec.speculation.precompute import precompute_window

    serving = bundles.serving(client)
    assert serving is not None
    update_user_state(cfg, start, serving, store)
    return int(precompute_window(cfg, start, store, client)["pairs"])


class EventTrigger:
    """`speculation.trigger: event` in the replay: each request's event joins the micro-batch of its second;
    a micro-batch's precompute (specrec.speculation.precompute.precompute_events, as the event-triggered
    deployment runs it) knows events before the second's end and lands event_delay after the event, so it
    is run before the first request at or after that time."""

    def __init__(self, cfg: Config, store: FeatureStore, client: mlflow.MlflowClient) -> None:
        self.cfg, self.store, self.client = cfg, store, client
        self.on = cfg.replay.precompute and cfg.speculation.trigger == "event"
        self.delay_s = int(
            parse_duration("speculation.event_delay", cfg.speculation.event_delay).total_seconds()
        )
        self.queue: dict[int, set[int]] = {}  # end of the event's second (unix s) -> user ids
        self.pairs, self.runs = 0, 0

    def saw(self, user: int, t: float) -> None:
        """A request's event happened at t."""
        if self.on:
            self.queue.setdefault(int(t) + 1, set()).add(user)

    def land(self, now: float) -> None:
        """Run every micro-batch whose row would have landed by `now`."""
        from specrec.speculation.precompute import precompute_events

        for end in sorted(self.queue):
            if end - 1 + self.delay_s > now:
                break
            users = sorted(self.queue.pop(end))
            at = pd.Timestamp(end, unit="s", tz="UTC")
            self.pairs += int(precompute_events(self.cfg, at, users, self.store, self.client)["pairs"])
            self.runs += 1


def _fallbacks(text: str) -> dict[str, float]:
    """Fallback answers by reason from the scorer's /metrics (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "specrec_fallbacks"
        for s in fam.samples
        if s.name == "specrec_fallbacks_total"
    }


def serve_windows(cfg: Config, windows: list[Window], as_of: pd.Timestamp, bar: tqdm) -> dict[str, Any]:
    """Start the scorer on loopback, replay the windows against it; the tally and what was precomputed."""
    from specrec.online.app import build_scorer
    from specrec.online.check import serve_in_thread
    from specrec.online.service import create_app

    sim = SimClock(as_of.timestamp())
    scorer, _ = build_scorer(cfg, now=sim)  # no bundle watcher: the bundle is fixed for the cycle
    client = mlflow.MlflowClient()
    tally, pairs = Tally(), 0
    triggered = EventTrigger(cfg, scorer.store, client)
    with serve_in_thread(create_app(scorer)) as url, httpx.Client(base_url=url, timeout=10) as http:
        for window in windows:
            if cfg.replay.precompute:
                triggered.land(window.start.timestamp())
                pairs += _nearline_tick(cfg, scorer.store, client, window.start)
            for user, item, ts in window.events[["user_id", "item_id", "timestamp"]].itertuples(index=False):
                sim.t = ts.timestamp()
                triggered.land(sim.t)
                t = time.perf_counter()
                try:
                    r = http.post("/recommend", json={"user_id": int(user), "k": cfg.replay.k})
                    body = r.json() if r.status_code == 200 else None
                except httpx.HTTPError:
                    body = None
                tally.add(int(item), (time.perf_counter() - t) * 1000, body)
                triggered.saw(int(user), sim.t)
                bar.update(1)
        fallbacks = _fallbacks(http.get("/metrics").text)
    bundle_id = scorer.state.bundle.bundle_id
    return {
        "tally": tally,
        "bundle_id": bundle_id,
        "pairs": pairs + triggered.pairs,
        "event_precompute_runs": triggered.runs,
        "fallbacks": fallbacks,
    }


def log_cycle(
    cfg: Config, cycle: Cycle, metrics: dict[str, float], tags: dict[str, str], summary: dict[str, Any]
) -> str:
    """One run in `replay`: named by the cycle, tagged with its as_of, the fixed metric keys, the summary."""
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=cycle.name) as run:
        mlflow.set_tags({"as_of": cycle.as_of.isoformat(), **tags})
        mlflow.log_params({f"replay.{k}": v for k, v in asdict(cfg.replay).items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(summary, "replay/summary.json")
    return str(run.info.run_id)


def replay_cycle(cfg: Config, params: Path, cycle: Cycle, events: pd.DataFrame, bar: tqdm) -> dict[str, Any]:
    """run_cycle at the cycle's as_of, then its next events against the scorer; log the cycle."""
    from flows.run_cycle import run_cycle

    start = time.perf_counter()
    built = run_cycle(as_of=cycle.as_of.isoformat(), params=str(params))
    use_project_store(cfg)  # the flow's tasks point MLflow at the store in their own threads
    span = next_events(events, cycle)
    length = parse_duration("speculation.window", cfg.speculation.window)
    windows = sample_windows(span, length, cfg.replay.requests, cfg.replay.seed + cycle.index)
    bar.reset(total=sum(len(w.events) for w in windows))
    bar.set_description(f"cycle {cycle.index} requests")
    served = serve_windows(cfg, windows, cycle.as_of, bar)
    metrics = served["tally"].metrics(time.perf_counter() - start)
    summary = served["tally"].summary() | {
        "fallbacks_by_reason": served["fallbacks"],
        "windows": len(windows),
        "events_in_span": len(span),
        "pairs_precomputed": served["pairs"],
        "event_precompute_runs": served["event_precompute_runs"],
        "cycle_steps": built["steps"],
        "cycle_seconds_by_step": built.get("seconds", {}),
    }
    tags = {
        "bundle_id": served["bundle_id"],
        "events_start": cycle.as_of.isoformat(),
        "events_end": (cycle.as_of + (cycle.as_of - cycle.start)).isoformat(),
        "cycle_run_id": built["run_id"],
    }
    run_id = log_cycle(cfg, cycle, metrics, tags, summary)
    return {"cycle": cycle.index, "as_of": cycle.name, "run_id": run_id, **metrics}


def replay(cfg: Config, params: Path, n_cycles: int, rerun: bool = False) -> list[dict[str, Any]]:
    """Replay the first n_cycles cycles; a cycle already replayed is skipped unless `rerun`."""
    from specrec.nearline.store import apply

    cycles = check_cycles(cfg, n_cycles)
    use_project_store(cfg)
    apply(cfg)  # the Feast tables exist before the first cycle writes (idempotent)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    out = []
    with tqdm(cycles, desc="replay cycles", position=0) as outer, tqdm(position=1, leave=False) as bar:
        for cycle in outer:
            earlier = None if rerun else done_run(cfg, EXPERIMENT, cycle.as_of.isoformat())
            if earlier is not None:
                tqdm.write(f"cycle {cycle.index} ({cycle.name}): replayed before (run {earlier.info.run_id})")
                out.append({"cycle": cycle.index, "as_of": cycle.name, "run_id": earlier.info.run_id})
                out[-1] |= earlier.data.metrics
                continue
            row = replay_cycle(cfg, params, cycle, events, bar)
            tqdm.write(describe(row))
            out.append(row)
    return out


def describe(row: dict[str, Any]) -> str:
    """One line per cycle for the console."""
    return (
        f"cycle {row['cycle']} ({row['as_of']}): {row['requests']:.0f} requests, {row['errors']:.0f} errors, "
        f"{row['degraded']:.0f} degraded/cold, HR@10 {row['hr_at_10']:.3f}, NDCG@10 {row['ndcg_at_10']:.3f}, "
        f"spec coverage {row['spec_coverage']:.3f}, latency p50/p95/p99 {row['latency_p50_ms']:.1f}/"
        f"{row['latency_p95_ms']:.1f}/{row['latency_p99_ms']:.1f} ms, {row['cycle_seconds']:.0f} s"
    )
