"""Does the FM's pair head rank retrieved candidates better than the FM's own retrieval score?

Speculation precomputes the FM's target-aware pair representations (`HSTU.pair_repr`) because they are
meant to rank better than the decomposable user-state x item score that retrieval already has. This
script checks that premise on the replay cycles: for every event with a history, the top-N candidates by
the FM's dot product (seen items excluded), then NDCG@10 of the event's item when those candidates are
ranked by (a) the dot product and (b) the pair score; paired differences with a bootstrap interval.

    python benchmarks/pair_head.py                      # the pipeline's FM (data/models/fm), 6 cycles
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.hstu import HSTU  # noqa: E402
from models.sequences import history_batch  # noqa: E402
from models.train import load_checkpoint  # noqa: E402
from specrec.clock import EventLog, ReplayClock  # noqa: E402
from specrec.config import load_config  # noqa: E402
from specrec.fm.replay_eval import cycle_targets  # noqa: E402
from specrec.io import read_parquet  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "pair_head.json"


def ndcg_at_10(scores: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """Per-row NDCG@10 of the one relevant column (`found`, (B, N) bool; rows without it score 0)."""
    hit = found.any(1)
    own = scores.gather(1, found.float().argmax(1, keepdim=True))
    rank = (scores > own).sum(1).double()
    return torch.where(hit & (rank < 10), 1 / torch.log2(rank + 2), torch.zeros_like(rank))


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    """Score the cycles, print and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--model", type=Path, default=None, help="FM checkpoint folder (default: paths.fm)")
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.params)
    folder = args.model or cfg.path(cfg.paths.fm)
    fm = load_checkpoint(folder)
    if not isinstance(fm, HSTU):
        raise SystemExit(f"{folder} holds a {type(fm).__name__}; the pair head is HSTU's (fm.model: hstu)")
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    table = fm.item_embeddings()
    out: dict[str, list[float]] = {"dot": [], "pair": [], "recall": []}
    for cyc in tqdm(ReplayClock.from_config(cfg.clock).cycles()[: args.cycles], desc="cycles"):
        hist, targets, _ = cycle_targets(EventLog(events), cyc)
        for lo in range(0, len(targets), 128):
            rows = np.arange(lo, min(lo + 128, len(targets)))
            items, times = history_batch(hist, rows, fm.config.max_len)
            scores = fm.user_state(items, times) @ table.T
            scores[:, 0] = -torch.inf
            for b, r in enumerate(rows):
                scores[b, torch.as_tensor(hist.items[r])] = -torch.inf
            cand = scores.topk(args.candidates, dim=1).indices  # (B, N)
            found = cand == torch.as_tensor(targets[rows])[:, None]
            _, pair = fm.pair_repr(items, times, cand)
            out["recall"] += found.any(1).double().tolist()
            out["dot"] += ndcg_at_10(scores.gather(1, cand), found).tolist()
            out["pair"] += ndcg_at_10(pair, found).tolist()
    diff = np.array(out["pair"]) - np.array(out["dot"])
    boot = diff[np.random.default_rng(0).integers(0, len(diff), (2000, len(diff)))].mean(1)
    result = {
        "model": str(folder.relative_to(cfg.root)) if folder.is_relative_to(cfg.root) else str(folder),
        "events": len(diff),
        "candidates": args.candidates,
        "recall@candidates": float(np.mean(out["recall"])),
        "ndcg@10_dot": float(np.mean(out["dot"])),
        "ndcg@10_pair": float(np.mean(out["pair"])),
        "pair_minus_dot": float(diff.mean()),
        "pair_minus_dot_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
