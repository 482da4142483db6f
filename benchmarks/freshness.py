"""Freshness benchmark: frozen base, daily LoRA adapter and daily full retrain, judged on the next cycle.

Over the replay cycles of the shipped data (params.yaml `clock`), at each cycle's as_of:
  (a) frozen: the FM trained once on history (events before clock.start), never updated;
  (b) lora:   what the daily_lora_finetune flow serves: an adapter on that frozen base trained on the
              cycle's events (minus the gate's holdout) plus an experience-replay sample (params.yaml
              `lora`, new items' rows trained, warm-started from the champion adapter), promoted by the
              same gate rule (holdout NDCG@10 not worse than the bare base and the champion); the
              champion adapter, or the bare base while there is none, is what is judged. Its CPU
              seconds include the gate's scoring. For reference `lora_ungated`: an adapter trained on
              the whole cycle and always served (warm-started from the previous one);
  (c) full:   the FM retrained from scratch on every event known at as_of (same model and optimisation);
each is scored on the *next* cycle's events (next-event NDCG@10 / HR@10, history = the user's earlier
events, seen items excluded, all items ranked). CPU seconds (time.process_time, one torch thread) are
those of the cycle's training. gain_recovered = mean(lora - frozen) / mean(full - frozen) over NDCG@10;
compute_ratio = sum(lora CPU) / sum(full CPU). Writes benchmarks/results/freshness.json (the issue's shape),
freshness_details.json (HR@10, the ungated adapter, gate decisions, set-up, machine) and freshness.png,
and logs them to the MLflow experiment `freshness-benchmark`.

The FM is sized for a 2-core CPU (--dim, --max-len, --layers, --epochs; defaults below) so the whole run
takes minutes; the flows use params.yaml's fm section.

    python benchmarks/freshness.py                        # ml-latest-small, all replay cycles
    python benchmarks/freshness.py --cycles 4             # the first 4 comparisons only
    python benchmarks/freshness.py --sequence ../shared/data/amazon/Toys_and_Games.txt --cycles 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models import lora  # noqa: E402
from models.hstu import HSTU  # noqa: E402
from models.train import TrainConfig, build_model, train  # noqa: E402
from specrec.clock import Cycle, ReplayClock  # noqa: E402
from specrec.config import ClockConfig, Config, load_config  # noqa: E402
from specrec.data.split import leave_one_out  # noqa: E402
from specrec.fm.data import load_loo  # noqa: E402
from specrec.fm.replay_eval import next_event_metrics  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.lora.adapters import passes  # noqa: E402
from specrec.lora.data import cycle_data  # noqa: E402
from specrec.lora.evaluate import score  # noqa: E402
from specrec.lora.finetune import spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "freshness.json"
EXPERIMENT = "freshness-benchmark"


# ---- data -----------------------------------------------------------------------------------------------


def sequence_project(cfg: Config, path: Path, step: str, n_cycles: int, tmp: Path) -> Config:
    """Ingest, prepare and split a sequence-format file in a temp project; the clock covers its last 10%."""
    from specrec.data import prepare, split
    from specrec.data.ingest import ingest

    paths = dataclasses.replace(
        cfg.paths, **{f.name: str(tmp / f.name) for f in dataclasses.fields(cfg.paths)}
    )
    data = dataclasses.replace(
        cfg.data,
        source="sequence",
        path=str(path.resolve()),
        sequence=dataclasses.replace(cfg.data.sequence, step=step),
    )
    seq_cfg = dataclasses.replace(cfg, paths=paths, data=data, root=tmp)
    ingest(seq_cfg)
    events = read_parquet(Path(paths.ingested) / "interactions.parquet", "ingested interactions")
    ts = events["timestamp"].sort_values().reset_index(drop=True)
    # synthetic times are start + position * step, so cycles here are bands of sequence positions
    start = ts.iloc[int(len(ts) * 0.9)]
    cadence = ((ts.iloc[-1] - start) / n_cycles).ceil("s") + pd.Timedelta("1s")  # the last event inside
    clock = ClockConfig(
        start=start.isoformat(), cadence=f"{int(cadence / pd.Timedelta('1s'))}s", cycles=n_cycles
    )
    seq_cfg = dataclasses.replace(seq_cfg, clock=clock)
    prepare.run(seq_cfg)
    split.run(seq_cfg)
    return seq_cfg


# ---- the three variants -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """The benchmark's FM size and budgets."""

    model: dict[str, Any]
    train: TrainConfig


def train_full(cfg: Config, known: pd.DataFrame, setup: Setup) -> tuple[HSTU, float]:
    """An FM trained from scratch on `known` (leave-one-out validation for early stopping); CPU seconds."""
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        leave_one_out(known, cfg.split.loo_min_events).to_parquet(Path(tmp) / "loo.parquet", index=False)
        data = load_loo(Path(tmp), cfg.path(cfg.paths.prepared))
    torch.manual_seed(setup.train.seed)  # the initial weights too, not only the training order
    model = build_model("hstu", setup.model | {"n_items": data.n_items})
    train(model, data.train, data.valid, setup.train)
    assert isinstance(model, HSTU)
    return model.eval(), time.process_time() - cpu0


def train_lora(
    cfg: Config, base: HSTU, known: pd.DataFrame, cycle: Cycle, warm: Any, holdout_share: float
) -> tuple[Any, Any, float]:
    """An adapter on the frozen base (warm-started from `warm`), the cycle minus its holdout; CPU seconds."""
    cpu0 = time.process_time()
    lc, cutoff = cfg.lora, ReplayClock.from_config(cfg.clock).start
    seed = lc.seed + cycle.index
    data = cycle_data(known, cycle, cutoff, base.config.max_len, holdout_share, lc.replay_share, seed)
    model = lora.wrap(base, spec(cfg, data.new_items), lc.seed)
    if warm is not None:
        lora.warm_start(model, warm)
    if data.new_events >= lc.min_events and data.new_windows:
        lora.finetune(
            model,
            data.windows,
            lc.epochs,
            lc.lr,
            lc.batch_size,
            lc.weight_decay,
            cfg.fm.train.loss,
            lc.seed,
            progress=False,
        )
    return model, data, time.process_time() - cpu0


@dataclasses.dataclass
class DailyLora:
    """The daily LoRA flow without the registry: train, gate on the holdout, serve the champion."""

    champion: Any = None  # the champion adapter (None: the bare base serves)

    def step(self, cfg: Config, base: HSTU, known: pd.DataFrame, cycle: Cycle) -> tuple[Any, float, str]:
        """Run one cycle; return the model that serves afterwards, CPU seconds and the decision."""
        cpu0, lc, max_len = time.process_time(), cfg.lora, base.config.max_len
        model, data, _ = train_lora(cfg, base, known, cycle, self.champion, lc.holdout_share)
        if data.new_events < lc.min_events or not data.new_windows:
            return self.champion or base, time.process_time() - cpu0, "skipped"
        challenger = score(model, known, data.holdout, max_len).ndcg
        floor = score(base, known, data.holdout, max_len).ndcg
        held = None if self.champion is None else score(self.champion, known, data.holdout, max_len).ndcg
        decision = "rejected"
        if passes(challenger, held, floor, lc.tolerance):
            self.champion, decision = model, "promoted"
        return self.champion or base, time.process_time() - cpu0, decision


def next_cycle_metrics(model: Any, events: pd.DataFrame, cycle: Cycle, max_len: int) -> dict[str, float]:
    """NDCG@10 and HR@10 on the events of `cycle`."""
    m = next_event_metrics(model, events[events["timestamp"] < cycle.as_of], cycle, max_len, ks=(10,))
    return {
        "ndcg@10": m.get("ndcg@10", math.nan),
        "hr@10": m.get("hr@10", math.nan),
        "events": m["events_scored"],
    }


# ---- the run ---------------------------------------------------------------------------------------------


def run(cfg: Config, setup: Setup, n_compare: int, progress: bool = True) -> dict[str, Any]:
    """Train the frozen base, then per cycle the adapter and the full retrain; score all on the next cycle."""
    from tqdm import tqdm

    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    clock = ReplayClock.from_config(cfg.clock)
    frozen, base_cpu = train_full(cfg, events[events["timestamp"] < clock.start], setup)
    max_len = frozen.config.max_len
    rows, daily, raw = [], DailyLora(), None
    cycles = clock.cycles()[: n_compare + 1]
    for cycle, nxt in tqdm(
        list(zip(cycles[:-1], cycles[1:], strict=True)), desc="cycles", disable=not progress
    ):
        known = events[events["timestamp"] < cycle.as_of]
        served, lora_cpu, decision = daily.step(cfg, frozen, known, cycle)
        # reference only: an ungated adapter on the whole cycle, warm-started from the previous one
        raw, data, raw_cpu = train_lora(cfg, frozen, known, cycle, raw, 0.0)
        full, full_cpu = train_full(cfg, known, setup)
        scores = {
            name: next_cycle_metrics(m, events, nxt, max_len)
            for name, m in (("frozen", frozen), ("lora", served), ("full", full), ("lora_ungated", raw))
        }
        rows.append(
            {
                "as_of": cycle.name,
                "evaluated_on": nxt.name,
                **{f"{v}_{m}": scores[v][m] for v in scores for m in ("ndcg@10", "hr@10")},
                "lora_cpu_s": lora_cpu,
                "full_cpu_s": full_cpu,
                "lora_ungated_cpu_s": raw_cpu,
                "lora_gate": decision,
                "events_scored": scores["frozen"]["events"],
                "new_item_rows": len(data.new_items),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"cycles": rows, "base_cpu_s": base_cpu} | summarise(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """gain_recovered and compute_ratio as the issue defines them, plus the means they come from."""
    variants = ("frozen", "lora", "full", "lora_ungated")
    mean = {v: float(np.mean([r[f"{v}_ndcg@10"] for r in rows])) for v in variants}
    full_gain, lora_gain = mean["full"] - mean["frozen"], mean["lora"] - mean["frozen"]
    lora_cpu, full_cpu = sum(r["lora_cpu_s"] for r in rows), sum(r["full_cpu_s"] for r in rows)
    return {
        "gain_recovered": lora_gain / full_gain if full_gain != 0 else math.nan,
        "compute_ratio": lora_cpu / full_cpu if full_cpu > 0 else math.nan,
        "ungated_gain_recovered": (mean["lora_ungated"] - mean["frozen"]) / full_gain
        if full_gain
        else math.nan,
        "mean_ndcg@10": mean,
        "mean_hr@10": {v: float(np.mean([r[f"{v}_hr@10"] for r in rows])) for v in variants},
        "lora_promotions": sum(r["lora_gate"] == "promoted" for r in rows),
        "targets": {"gain_recovered": ">= 0.8", "compute_ratio": "<= 0.1"},
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """NDCG@10, HR@10 and CPU seconds per cycle for the three variants, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cycles"]
    x = [r["evaluated_on"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes[:2], ("ndcg@10", "hr@10"), strict=True):
        for v in ("frozen", "lora", "full", "lora_ungated"):
            ax.plot(x, [r[f"{v}_{metric}"] for r in rows], marker="o", label=v)
        ax.set_title(f"next-cycle {metric}")
        ax.legend()
    axes[2].bar(np.arange(len(x)) - 0.2, [r["lora_cpu_s"] for r in rows], 0.4, label="lora")
    axes[2].bar(np.arange(len(x)) + 0.2, [r["full_cpu_s"] for r in rows], 0.4, label="full retrain")
    axes[2].set_xticks(np.arange(len(x)), x)
    axes[2].set_title("CPU seconds per cycle")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(
        f"gain recovered {result['gain_recovered']:.2f}, compute ratio {result['compute_ratio']:.3f}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_mlflow(cfg: Config, result: dict[str, Any], png: Path, args: argparse.Namespace) -> str:
    """One run in `freshness-benchmark`: per-cycle metrics by step, the summary, the plot and the JSON."""
    import mlflow
    from specrec.registry import metric_key
    from specrec.tracking import experiment_id, use_project_store

    use_project_store(cfg.root)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=args.run_name) as run:
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("out",)})
        for step, row in enumerate(result["cycles"], start=1):
            mlflow.log_metrics(
                {metric_key(k): float(v) for k, v in row.items() if isinstance(v, int | float)}, step=step
            )
        mlflow.log_metrics(
            {"gain_recovered": result["gain_recovered"], "compute_ratio": result["compute_ratio"]}
        )
        mlflow.log_artifact(str(png))
        mlflow.log_dict(result, "freshness.json")
    return run.info.run_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--params", type=Path, default=REPO / "params.yaml", help="params.yaml (lora, clock, data)"
    )
    p.add_argument(
        "--cycles", type=int, default=0, help="comparisons to run (0 = every cycle with a next one)"
    )
    p.add_argument("--dim", type=int, default=32, help="FM embedding size for the benchmark")
    p.add_argument("--max-len", type=int, default=50, help="FM window")
    p.add_argument("--layers", type=int, default=2, help="FM layers")
    p.add_argument("--epochs", type=int, default=8, help="max epochs of the base and of each full retrain")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience of full training")
    p.add_argument(
        "--sequence", type=Path, default=None, help="a sequence-format file instead of params' data"
    )
    p.add_argument("--sequence-step", default="1h", help="time between a user's events in --sequence")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--run-name", default="freshness", help="MLflow run name")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the figures, write JSON and PNG, log to MLflow."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.params)
    fm = cfg.fm
    setup = Setup(
        model={
            "max_len": args.max_len,
            "dim": args.dim,
            "n_layers": args.layers,
            "n_heads": fm.n_heads,
            "dropout": fm.dropout,
            "time_buckets": fm.time_buckets,
            "l2_norm": fm.l2_norm,
            "temperature": fm.temperature,
        },
        train=TrainConfig(
            loss=fm.train.loss,
            lr=fm.train.lr,
            batch_size=fm.train.batch_size,
            max_epochs=args.epochs,
            patience=args.patience,
            seed=fm.train.seed,
            progress=False,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        n_cycles = cfg.clock.cycles
        if args.sequence is not None:
            n_cycles = max(args.cycles + 1, 6) if args.cycles else 6
            cfg = sequence_project(cfg, args.sequence, args.sequence_step, n_cycles, Path(tmp))
        n_compare = min(args.cycles or n_cycles - 1, n_cycles - 1)
        wall0 = time.perf_counter()
        result = run(cfg, setup, n_compare)
    result["wall_seconds"] = time.perf_counter() - wall0
    result["setup"] = {
        "model": setup.model,
        "max_epochs": args.epochs,
        "lora": dataclasses.asdict(cfg.lora),
        "data": args.sequence.name if args.sequence else cfg.data.path,
    }
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} torch thread(s)"
    )
    result["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    png = args.out.with_suffix(".png")
    plot(result, png)
    if not args.no_mlflow:
        result["mlflow_run_id"] = log_mlflow(load_config(args.params), result, png, args)
    details = args.out.with_name(args.out.stem + "_details.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(issue_shape(result), indent=2) + "\n")
    details.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"gain_recovered {result['gain_recovered']:.3f} (target >= 0.8), compute_ratio "
        f"{result['compute_ratio']:.4f} (target <= 0.1); mean NDCG@10 {result['mean_ndcg@10']}; "
        f"{result['wall_seconds']:.0f} s; wrote {args.out}, {details} and {png}"
    )


ISSUE_CYCLE_KEYS = ("as_of", "frozen_ndcg@10", "lora_ndcg@10", "full_ndcg@10", "lora_cpu_s", "full_cpu_s")


def issue_shape(result: dict[str, Any]) -> dict[str, Any]:
    """The results file exactly as the issue gives it; everything else goes to the details file."""
    return {
        "cycles": [{k: row[k] for k in ISSUE_CYCLE_KEYS} for row in result["cycles"]],
        "gain_recovered": result["gain_recovered"],
        "compute_ratio": result["compute_ratio"],
        "command": result["command"],
    }


if __name__ == "__main__":
    main()
