"""Choose the daily LoRA settings on a validation slice the freshness benchmark never scores.

The slice: a frozen base trained by the benchmark's FM recipe at clock.start - (n+1) cadences, then n
daily cycles ending at clock.start, each judged on the next cycle's events, all before clock.start (the
benchmark scores nothing before clock.start + one cadence). Every setting runs the real daily path
(`run_cycle` on a throw-away MLflow store, as benchmarks/freshness.py does) and is scored by the mean over
cycles of NDCG@10 of what serves minus the frozen base's (and of the ungated challenger, for reference).
Settings are params.yaml `lora` overrides, one at a time around the current values.

    python benchmarks/freshness_tune.py                      # every setting, 8 validation comparisons
    python benchmarks/freshness_tune.py --only params lr=0.01
    python benchmarks/freshness_tune.py --full --only        # + the daily full retrain of each cycle, so
                                                             # every setting gets gain_recovered there
    python benchmarks/freshness_tune.py --seeds 3 --full --only params   # every arm over 3 FM seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from specrec.clock import ReplayClock  # noqa: E402
from specrec.config import Config, load_config, parse_duration  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.lora.evaluate import target_users  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "freshness_tuning.json"
# supervise: window, rows for every trained-on item, lr 0.001, replay 0.25 (the settings below add to it)
WINDOW_ROWS: dict[str, Any] = {
    "supervise": "window",
    "cycle_item_rows": True,
    "lr": 0.001,
    "replay_share": 0.25,
}
GRID: dict[str, dict[str, Any]] = {
    "params": {},
    "lr=0.001": {"lr": 0.001},
    "lr=0.01": {"lr": 0.01},
    "epochs=2": {"epochs": 2},
    "epochs=10": {"epochs": 10},
    "r=4": {"r": 4, "alpha": 8.0},
    "r=16": {"r": 16, "alpha": 32.0},
    "replay=0.2": {"replay_share": 0.2},
    "replay=0.8": {"replay_share": 0.8},
    "replay=0.9": {"replay_share": 0.9},
    "replay=0.9,lr=0.001": {"replay_share": 0.9, "lr": 0.001},
    "replay=0.9,epochs=10": {"replay_share": 0.9, "epochs": 10},
    "lr=0.0001": {"lr": 0.0001},
    "lr=0.0003,epochs=2": {"lr": 0.0003, "epochs": 2},
    "tolerance=0": {"tolerance": 0.0},
    "holdout=0.5": {"holdout_share": 0.5},
    "no_warm_start": {"warm_start": False},
    "no_new_item_rows": {"new_item_rows": False},
    # every position of the new events' windows supervised, and trainable rows for every item trained on
    "window,rows": {"supervise": "window", "cycle_item_rows": True},
    # the same at lr 0.001 with replay 0.25, for 1, 2, 3 and 5 epochs (on the Toys file the gate's holdout
    # rose with each epoch)
    **{f"window,rows,lr=0.001,epochs={n},replay=0.25": WINDOW_ROWS | {"epochs": n} for n in (1, 2, 3, 5)},
    # at most n epochs, early stopping on 10% of the cycle's users held out of training
    **{
        f"window,rows,lr=0.001,epochs<={n},replay=0.25,val=0.1": WINDOW_ROWS
        | {"epochs": n, "val_share": 0.1, "patience": 1}
        for n in (3, 5)
    },
    # every event since the base's cutoff is a new training event, not only the cycle's (warm-started from
    # the champion adapter or a fresh adapter each cycle); lr and warm start explicit, as params.yaml's
    # changed with these results (benchmarks/results/freshness_tuning_since_cutoff.json)
    "cycle,lr=0.004": {"train_since": "cycle", "lr": 0.004, "warm_start": True},
    "cycle,lr=0.001": {"train_since": "cycle", "lr": 0.001, "warm_start": True},
    **{
        f"since_cutoff,lr={lr}": {"train_since": "base_cutoff", "lr": lr, "warm_start": True}
        for lr in (0.001, 0.002, 0.004)
    },
    **{
        f"since_cutoff,no_warm_start,lr={lr}{name}": {
            "train_since": "base_cutoff",
            "lr": lr,
            "warm_start": False,
            **o,
        }
        for lr, name, o in (
            (0.0005, "", {}),
            (0.001, "", {}),
            (0.002, "", {}),
            (0.004, "", {}),
            (0.004, ",replay=0.5", {"replay_share": 0.5}),
            (0.004, ",epochs=8", {"epochs": 8}),
            (0.004, ",new_item_rows_only", {"cycle_item_rows": False}),
            (0.004, ",no_item_rows", {"cycle_item_rows": False, "new_item_rows": False}),
        )
    },
    # around since_cutoff,lr=0.001 with warm start (params.yaml since 2026-11-30): more steps, a larger
    # rank, more or no replay, a lower or constant rate
    **{
        f"since_cutoff,lr=0.001{name}": {"train_since": "base_cutoff", "lr": 0.001, "warm_start": True, **o}
        for name, o in (
            (",epochs=8", {"epochs": 8}),
            (",epochs=8,patience=2", {"epochs": 8, "patience": 2}),
            (",r=16", {"r": 16, "alpha": 32.0}),
            (",replay=0.25", {"replay_share": 0.25}),
            (",replay=0", {"replay_share": 0.0}),
            (",constant", {"lr_schedule": "constant"}),
        )
    },
    "since_cutoff,lr=0.0005": {"train_since": "base_cutoff", "lr": 0.0005, "warm_start": True},
    # on ml-latest-small 10% of the users active since the cutoff is 1-5 validation users, and early
    # stopping on them mostly keeps epoch 1: a fixed number of epochs instead (no validation users), or
    # a larger gate holdout (with train_since base_cutoff the cycle's newest events are little of the data)
    **{
        f"since_cutoff,lr={lr},epochs={n},no_val": {
            "train_since": "base_cutoff",
            "lr": lr,
            "warm_start": True,
            "epochs": n,
            "val_share": 0.0,
        }
        for lr, n in ((0.001, 2), (0.001, 3), (0.002, 2))
    },
    # is the adapter under-trained (the retrain fits 13 epochs)? Four fixed epochs, also at rank 16
    **{
        f"since_cutoff,lr=0.001{name},epochs=4,no_val": {
            "train_since": "base_cutoff",
            "lr": 0.001,
            "warm_start": True,
            "epochs": 4,
            "val_share": 0.0,
            **o,
        }
        for name, o in (("", {}), (",r=16", {"r": 16, "alpha": 32.0}))
    },
    "since_cutoff,lr=0.001,holdout=0.5": {
        "train_since": "base_cutoff",
        "lr": 0.001,
        "warm_start": True,
        "holdout_share": 0.5,
    },
}


def bench() -> Any:
    """benchmarks/freshness.py, this script's neighbour (benchmarks/ is scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import freshness

    return freshness


def validation_clock(cfg: Config, n_compare: int) -> Config:
    """cfg whose clock is the n_compare+1 cycles that end at the benchmark's clock.start."""
    start = ReplayClock.from_config(cfg.clock).start
    cadence = parse_duration("clock.cadence", cfg.clock.cadence)
    begin = start - (n_compare + 1) * cadence
    clock = dataclasses.replace(cfg.clock, start=begin.isoformat(), cycles=n_compare + 1)
    out = dataclasses.replace(cfg, clock=clock)
    last = ReplayClock.from_config(out.clock).cycles()[-1]
    assert last.as_of <= start, f"validation cycle {last.name} reaches into the benchmark's cycles"
    return out


def evaluate_setting(fb: Any, cfg: Config, frozen: Any, events: pd.DataFrame) -> dict[str, Any]:
    """Run the daily path over the validation cycles with cfg.lora; gains over the frozen base."""
    clock = ReplayClock.from_config(cfg.clock)
    cycles = clock.cycles()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, fb.mlflow_store(Path(tmp)):
        lcfg = fb.lora_project(cfg, Path(tmp))
        fb.register_champion(Path(tmp), frozen, clock.start)
        for cycle, nxt in zip(cycles[:-1], cycles[1:], strict=True):
            served, challenger, lrow = fb.lora_step(lcfg, cycle)
            models = {"frozen": frozen.model, "lora": served, "challenger": challenger or frozen.model}
            ranks = {a: fb.ranks(m, events, nxt) for a, m in models.items()}
            ev = fb.EvalSet(target_users(events, nxt), ranks)
            rows.append(
                {
                    "as_of": cycle.name,
                    "events": len(ev.users),
                    **{f"{a}_ndcg@10": float(ev.ndcg(a).mean()) for a in models},
                    "lora_cpu_s": lrow["lora_cpu_s"],
                    "lora_train_targets": lrow.get("lora_train_targets"),
                    "gate": lrow["lora_gate"],
                }
            )
    gain = [r["lora_ndcg@10"] - r["frozen_ndcg@10"] for r in rows]
    ungated = [r["challenger_ndcg@10"] - r["frozen_ndcg@10"] for r in rows]
    return {
        "mean_gain": float(np.mean(gain)),
        "mean_gain_ungated": float(np.mean(ungated)),
        "promotions": sum(r["gate"] == "promoted" for r in rows),
        "lora_cpu_s": float(sum(r["lora_cpu_s"] for r in rows)),
        "cycles": rows,
    }


def full_reference(fb: Any, cfg: Config, frozen: Any, events: pd.DataFrame, cache: Path) -> dict[str, Any]:
    """The daily full retrain on the same validation cycles (the benchmark's recipe, cached): the gain a
    setting's is a share of, as the issue's gain_recovered."""
    cycles = ReplayClock.from_config(cfg.clock).cycles()
    rows = []
    for cycle, nxt in zip(cycles[:-1], cycles[1:], strict=True):
        full = fb.train_fm_recipe(cfg, events[events["timestamp"] < cycle.as_of], cache)
        models = {"frozen": frozen.model, "full": full.model}
        ev = fb.EvalSet(target_users(events, nxt), {a: fb.ranks(m, events, nxt) for a, m in models.items()})
        rows.append(
            {
                "as_of": cycle.name,
                **{f"{a}_ndcg@10": float(ev.ndcg(a).mean()) for a in ("frozen", "full")},
                "full_cpu_s": full.cpu_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    gain = [r["full_ndcg@10"] - r["frozen_ndcg@10"] for r in rows]
    cpu_s = float(sum(r["full_cpu_s"] for r in rows))
    return {"mean_gain": float(np.mean(gain)), "full_cpu_s": cpu_s, "cycles": rows}


def combine_seeds(per_seed: list[dict[str, Any]], arm: str = "lora") -> dict[str, Any]:
    """A setting's (or the full retrain's) results over several FM seeds: gains and CPU seconds averaged
    per seed, promotions summed; each seed's own result under `per_seed`. One seed: its result as is.
    arm: whose gain the standard error is of (lora: what served; full: the full retrain)."""
    if len(per_seed) == 1:
        return per_seed[0]
    out: dict[str, Any] = {}
    for key in ("mean_gain", "mean_gain_ungated", "lora_cpu_s", "full_cpu_s"):
        if key in per_seed[0]:
            out[key] = float(np.mean([r[key] for r in per_seed]))
    if "promotions" in per_seed[0]:
        out["promotions"] = int(sum(r["promotions"] for r in per_seed))
    # the spread of one (seed, cycle) comparison's gain, and the standard error of their mean
    gains = [c[f"{arm}_ndcg@10"] - c["frozen_ndcg@10"] for r in per_seed for c in r["cycles"]]
    out["gain_se"] = float(np.std(gains, ddof=1) / np.sqrt(len(gains)))
    return out | {"per_seed": per_seed}


def main(argv: list[str] | None = None) -> None:
    """Train (or load) the validation base, run every setting, write the ranking."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--cycles", type=int, default=8, help="validation comparisons (cycles before clock.start)")
    p.add_argument("--epochs", type=int, default=0, help="FM epoch budget (0 = the champion's)")
    p.add_argument("--only", nargs="*", default=None, help=f"settings to run, of {list(GRID)}")
    p.add_argument("--cache", type=Path, default=None, help="trained-FM cache (default: the benchmark's)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--full", action="store_true", help="also train the daily full retrain of every validation cycle"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat every setting (and the full retrain) with the FM recipe's and the adapter's seed moved "
        "by 0..N-1 and average, as benchmarks/freshness.py --seeds does",
    )
    p.add_argument(
        "--seed-offset",
        type=int,
        default=None,
        help="only this seed offset (to fill the cache for one seed beside another process)",
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"error: --seeds {args.seeds}: give 1 or more seeds to average over")
    torch.set_num_threads(1)
    fb = bench()
    cfg = load_config(args.params)
    cfg = validation_clock(fb.recipe(cfg, args.epochs or fb.champion_epochs(cfg)), args.cycles)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    start = ReplayClock.from_config(cfg.clock).start
    cache = args.cache or fb.CACHE
    offsets = [args.seed_offset] if args.seed_offset is not None else list(range(args.seeds))
    seeded = {k: fb.seeded(cfg, k) for k in offsets}
    frozen = {k: fb.train_fm_recipe(seeded[k], events[events["timestamp"] < start], cache) for k in offsets}
    full = (
        combine_seeds([full_reference(fb, seeded[k], frozen[k], events, cache) for k in offsets], "full")
        if args.full
        else None
    )
    results: dict[str, Any] = {}
    for name in args.only if args.only is not None else list(GRID):
        t0 = time.perf_counter()
        per_seed = []
        for k in offsets:
            lcfg = dataclasses.replace(seeded[k], lora=dataclasses.replace(seeded[k].lora, **GRID[name]))
            per_seed.append(evaluate_setting(fb, lcfg, frozen[k], events))
        results[name] = combine_seeds(per_seed) | {"overrides": GRID[name]}
        results[name]["wall_s"] = time.perf_counter() - t0
        r = results[name]
        se = f" (se {r['gain_se']:.5f})" if "gain_se" in r else ""
        print(
            f"{name}: gain {r['mean_gain']:+.5f}{se} (ungated {r['mean_gain_ungated']:+.5f}), "
            f"{r['promotions']} promotions, lora CPU {r['lora_cpu_s']:.1f} s, {r['wall_s']:.0f} s wall",
            flush=True,
        )
    out: dict[str, Any] = {
        "validation_clock": dataclasses.asdict(cfg.clock),
        "seed_offsets": offsets,
        "frozen_base": {k: frozen[offsets[0]].meta[k] for k in ("cpu_s", "epochs", "best_epoch", "stopped")},
        "ranking": sorted(results, key=lambda n: -results[n]["mean_gain"]),
        "settings": results,
        "commands": ["python " + " ".join(shlex.quote(a) for a in sys.argv)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and args.only is not None:  # keep earlier settings' results
        old = json.loads(args.out.read_text())
        same = old.get("validation_clock") == out["validation_clock"]
        if same and old.get("seed_offsets", [0]) == offsets:
            out["settings"] = old["settings"] | results
            out["commands"] = old.get("commands", [old.get("command")]) + out["commands"]
            out["ranking"] = sorted(out["settings"], key=lambda n: -out["settings"][n]["mean_gain"])
            if "note" in old:
                out["note"] = old["note"]
            if full is None and "full_retrain" in old:
                full = old["full_retrain"]
    if full is not None:
        out["full_retrain"] = full
        for r in out["settings"].values():  # the ratios, on the validation cycles
            r["gain_recovered"] = r["mean_gain"] / full["mean_gain"] if full["mean_gain"] else None
            r["compute_ratio"] = r["lora_cpu_s"] / full["full_cpu_s"]
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("ranking:", out["ranking"])


if __name__ == "__main__":
    main()
