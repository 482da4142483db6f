"""DDP benchmark: FM training steps per second in one process versus two torchrun ranks (gloo, CPU).

The FM of params.yaml (architecture, loss, global batch fm.train.batch_size) trains for `--epochs` epochs
on the project's leave-one-out split (data/split, data/prepared: run `dvc repro split` first), each setting
in fresh subprocesses:

- `1x1`: one process, 1 torch thread,
- `1x2`: one process, 2 torch threads (what one process can do on a 2-core machine),
- `2x1`: `torchrun --standalone --nproc_per_node 2`, 1 thread per rank, each rank half of every batch.

Steps/s counts optimiser steps over optimiser time (validation excluded); the per-epoch training loss of
each setting is reported too, so the JSON also shows that 2 ranks train the same model. The machine's other
load is not controlled: quote the figures with the load average recorded beside them.

    python benchmarks/ddp.py                             # writes benchmarks/results/ddp.json
    python benchmarks/ddp.py --epochs 1 --out /tmp/ddp.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

RESULTS = REPO / "benchmarks" / "results" / "ddp.json"
SETTINGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name -> (processes, threads per process)


def worker(params: Path, epochs: int, out: Path) -> None:
    """Train (alone or as a torchrun rank) and, on rank 0, write steps/s and losses to `out`."""
    import torch

    from models.train import train
    from specrec.config import load_config
    from specrec.fm.data import load_loo
    from specrec.fm.distributed import process_group
    from specrec.fm.train import fm_model, train_config

    cfg = load_config(params)
    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    tcfg = dataclasses.replace(
        train_config(cfg, progress=False), max_epochs=epochs, patience=epochs, time_budget_s=None
    )
    with process_group() as shard:
        result = train(fm_model(cfg, data), data.train, data.valid, tcfg, shard=shard)
        if shard is None or shard.is_main:
            steps = len(result.step_losses)
            row = {
                "processes": 1 if shard is None else shard.world_size,
                "threads_per_process": torch.get_num_threads(),
                "steps": steps,
                "train_seconds": round(result.train_seconds, 2),
                "steps_per_s": round(steps / result.train_seconds, 3),
                "tokens_per_s": round(result.tokens_per_s, 1),
                "epoch_losses": [round(r.loss, 6) for r in result.epochs],
                "valid_ndcg_at_10": [round(r.metrics["ndcg@10"], 5) for r in result.epochs],
            }
            out.write_text(json.dumps(row))


def run_setting(params: Path, epochs: int, processes: int, threads: int, folder: Path) -> dict[str, Any]:
    """One setting in fresh subprocesses; returns rank 0's row."""
    out = folder / f"{processes}x{threads}.json"
    me = [str(Path(__file__).resolve()), "--worker", "--params", str(params), "--epochs", str(epochs)]
    cmd = [sys.executable, *me, "--out", str(out)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        cmd += [*me, "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return json.loads(out.read_text())


def main() -> None:
    """Parse arguments; run every setting and write the JSON (or be one worker)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.params, args.epochs, args.out)
        return
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {n: run_setting(args.params, args.epochs, *SETTINGS[n], Path(tmp)) for n in args.settings}
    report = {
        "command": " ".join(["python", "benchmarks/ddp.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "loadavg_1m_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "epochs": args.epochs,
        "settings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name}: {row['steps_per_s']:.2f} steps/s, epoch losses {row['epoch_losses']}")


if __name__ == "__main__":
    main()
