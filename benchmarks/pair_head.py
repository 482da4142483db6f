"""Does the FM's pair head rank retrieved candidates better than the FM's own retrieval score?

Speculation precomputes the FM's target-aware pair representations (`HSTU.pair_repr`) because they are
meant to rank better than the decomposable user-state x item score that retrieval already has. This
script checks that premise on the replay cycles: for every event with a history, the top-N candidates by
the FM's dot product (seen items excluded), then NDCG@10 of the event's item when those candidates are
ranked by (a) the dot product and (b) the pair score; paired differences with a bootstrap interval.

With `--residual-heads`, it also trains ranking heads that start exactly at the dot product (a
zero-initialised residual on the frozen FM's own outputs: the user state and each candidate token's
M-FALCON output) on the FM's own top-N candidates of the events before clock.start (the base's training
events), and scores them on the same cycles: `linear` adds (W h_c).e, `mlp` adds an MLP of
[h_c*e, h_c*u, u*e]. Whether a target-aware head trained as a ranker beats the cheap score at all.

With `--train-fm`, it first trains a fresh FM like `train_fm` (same data and params, seed --seed; no registry,
a fixed number of epochs instead of the wall-clock budget) with the pair-loss recipe given by
`--pair-negatives-from` (batch: other users' next items; retrieval: hard negatives from the model's
own top items), `--pair-negatives`, `--pair-loss-weight`, `--pair-cuts` (points of each history the
pair loss trains at) and `--pair-gate` (the candidate output enters the pair vector through a learned
weight that starts at 0), and scores that FM: does a pair head trained on
the candidates it will rank beat the dot product?

    python benchmarks/pair_head.py                      # the pipeline's FM (data/models/fm), 6 cycles
    python benchmarks/pair_head.py --residual-heads linear mlp    # + the two residual heads (~8 min)
    python benchmarks/pair_head.py --train-fm --pair-negatives-from retrieval --pair-negatives 32 \
        --pair-loss-weight 0.1 --out benchmarks/results/pair_head_retrieval_w0.1.json   # ~5 min
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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.hstu import HSTU  # noqa: E402
from models.sequences import Sequences, history_batch  # noqa: E402
from models.train import load_checkpoint, train  # noqa: E402
from specrec.clock import Cycle, EventLog, ReplayClock  # noqa: E402
from specrec.config import Config, load_config  # noqa: E402
from specrec.fm.replay_eval import cycle_targets  # noqa: E402
from specrec.io import read_parquet  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "pair_head.json"


def ndcg_at_10(scores: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """Per-row NDCG@10 of the one relevant column (`found`, (B, N) bool; rows without it score 0)."""
    hit = found.any(1)
    own = scores.gather(1, found.float().argmax(1, keepdim=True))
    rank = (scores > own).sum(1).double()
    return torch.where(hit & (rank < 10), 1 / torch.log2(rank + 2), torch.zeros_like(rank))


def top_candidates(
    fm: HSTU, table: torch.Tensor, hist: Sequences, rows: np.ndarray, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histories (B, T) + timestamps of `rows`, the FM's dot scores (B, n_items+1) with padding and seen
    items at -inf, and the top-n candidates (B, n) by them."""
    items, times = history_batch(hist, rows, fm.config.max_len)
    scores = fm.user_state(items, times) @ table.T
    scores[:, 0] = -torch.inf
    for b, r in enumerate(rows):
        scores[b, torch.as_tensor(hist.items[r])] = -torch.inf
    return items, times, scores, scores.topk(n, dim=1).indices


class ResidualHead(nn.Module):
    """score = (u.e + r(u, h_c, e)) * logit_scale with r = 0 at initialisation: the dot product's ranking."""

    def __init__(self, kind: str, dim: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        last = nn.Linear(dim, dim, bias=False) if kind == "linear" else nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)  # r = 0 at initialisation
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        # linear: r = (W h_c) . e; mlp: r = MLP([h_c*e, h_c*u, u*e])
        self.net: nn.Module = (
            last if kind == "linear" else nn.Sequential(nn.Linear(3 * dim, hidden), nn.SiLU(), last)
        )

    def forward(self, fm: HSTU, items: torch.Tensor, times: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) of candidates (B, C) for histories (B, T); the FM itself stays frozen."""
        with torch.no_grad():
            u, hc = fm.candidate_outputs(items, times, cand)  # (B, D), (B, C, D)
            e = fm.item_emb(cand)
            e = F.normalize(e, dim=-1) if fm.config.l2_norm else e
            u = u.unsqueeze(1)  # (B, 1, D)
        if self.kind == "linear":
            r = (self.net(hc) * e).sum(-1)
        else:
            r = self.net(torch.cat([hc * e, hc * u, (u * e).expand_as(hc)], dim=-1)).squeeze(-1)
        return ((u * e).sum(-1) + r) * fm.logit_scale()


def train_head(
    fm: HSTU, table: torch.Tensor, log: EventLog, cutoff: pd.Timestamp, kind: str, args: argparse.Namespace
) -> tuple[ResidualHead, dict[str, object]]:
    """Train a residual head by softmax over the FM's own top-N candidates of the events in
    [args.train_from, cutoff) whose item is among them (the base's training events)."""
    torch.manual_seed(args.seed)
    hist, targets, _ = cycle_targets(log, Cycle(0, pd.Timestamp(args.train_from, tz="UTC"), cutoff))
    examples: list[tuple[int, torch.Tensor, int]] = []
    with torch.no_grad():
        for lo in range(0, len(targets), 256):
            rows = np.arange(lo, min(lo + 256, len(targets)))
            *_, cand = top_candidates(fm, table, hist, rows, args.candidates)
            found = cand == torch.as_tensor(targets[rows])[:, None]
            examples += [
                (int(r), cand[b], int(found[b].int().argmax())) for b, r in enumerate(rows) if found[b].any()
            ]
    head = ResidualHead(kind, fm.config.dim, args.hidden)
    opt = torch.optim.Adam(head.parameters(), lr=args.head_lr[kind])
    rng = np.random.default_rng(args.seed)
    losses = []
    for _ in tqdm(range(args.head_epochs), desc=f"{kind} head epochs"):
        order, total = rng.permutation(len(examples)), 0.0
        for lo in range(0, len(examples), 32):
            part = [examples[i] for i in order[lo : lo + 32]]
            items, times = history_batch(hist, np.array([r for r, _, _ in part]), fm.config.max_len)
            scores = head(fm, items, times, torch.stack([c for _, c, _ in part]))
            loss = F.cross_entropy(scores, torch.tensor([k for _, _, k in part]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(part)
        losses.append(total / len(examples))
    head.eval()
    info: dict[str, object] = {
        "train_events": len(targets),
        "train_examples": len(examples),
        "train_loss_by_epoch": losses,
    }
    return head, info


def train_fresh(cfg: Config, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Train the pipeline's FM with the requested pair-loss recipe into `folder`; what it did."""
    from specrec.fm.data import load_loo
    from specrec.fm.train import fm_model, train_config

    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    ft = cfg.fm.train
    recipe = dataclasses.replace(
        ft,
        seed=args.seed,
        pair_negatives_from=args.pair_negatives_from,
        pair_negatives=args.pair_negatives or ft.pair_negatives,
        pair_cuts=args.pair_cuts,
        pair_loss_weight=ft.pair_loss_weight if args.pair_loss_weight is None else args.pair_loss_weight,
        max_epochs=args.train_epochs,
        patience=args.train_epochs,
        time_budget_s=None,
    )
    fm = dataclasses.replace(cfg.fm, pair_gate=args.pair_gate or cfg.fm.pair_gate, train=recipe)
    cfg = dataclasses.replace(cfg, fm=fm)  # the pipeline's FM builders, with this recipe
    model = fm_model(cfg, data)
    tcfg = train_config(cfg, progress=True)
    started = time.perf_counter()
    result = train(model, data.train, data.valid, tcfg, None, folder)
    return {
        "seed": args.seed,
        "pair_gate": cfg.fm.pair_gate,
        "pair_negatives_from": tcfg.pair_negatives_from,
        "pair_negatives": tcfg.pair_negatives,
        "pair_cuts": tcfg.pair_cuts,
        "pair_hard_pool": tcfg.pair_hard_pool,
        "pair_loss_weight": tcfg.pair_loss_weight,
        "epochs": result.n_epochs,
        "best_epoch": result.best_epoch,
        "valid_ndcg@10": result.best_metrics["ndcg@10"],
        "train_wall_s": time.perf_counter() - started,
    }


def paired(a: list[float], b: list[float]) -> dict[str, object]:
    """Mean of a - b and its 95% bootstrap interval over events."""
    diff = np.array(a) - np.array(b)
    boot = diff[np.random.default_rng(0).integers(0, len(diff), (2000, len(diff)))].mean(1)
    return {
        "mean": float(diff.mean()),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
    }


def main(argv: list[str] | None = None) -> None:
    """Score the cycles, print and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--model", type=Path, default=None, help="FM checkpoint folder (default: paths.fm)")
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--residual-heads", nargs="*", default=[], choices=["linear", "mlp"])
    p.add_argument("--train-from", default="2010-01-01", help="first event (UTC date) the heads train on")
    p.add_argument("--head-epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32, help="hidden units of the mlp head")
    p.add_argument("--seed", type=int, default=0, help="of the heads, and of the FM with --train-fm")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--train-fm", action="store_true", help="train a fresh FM (recipe below) and score it")
    p.add_argument("--pair-negatives-from", choices=["batch", "retrieval"], default="batch")
    p.add_argument("--pair-negatives", type=int, default=None, help="default: fm.train.pair_negatives")
    p.add_argument("--pair-loss-weight", type=float, default=None, help="default: fm.train.pair_loss_weight")
    p.add_argument("--pair-gate", action="store_true", help="HSTUConfig.pair_gate (a gated candidate output)")
    p.add_argument("--pair-cuts", type=int, default=1, help="points per history the pair loss trains at")
    p.add_argument("--train-epochs", type=int, default=13, help="the pipeline FM's epochs in its budget")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.train_fm and args.model is not None:
        p.error("--train-fm trains its own FM; drop --model")
    args.head_lr = {"linear": 0.003, "mlp": 0.001}
    torch.set_num_threads(args.threads)
    cfg = load_config(args.params)
    folder = args.model or cfg.path(cfg.paths.fm)
    trained: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_fm:
            folder = Path(tmp) / "fm"
            trained = train_fresh(cfg, args, folder)
        fm = load_checkpoint(folder)
    if not isinstance(fm, HSTU):
        raise SystemExit(f"{folder} holds a {type(fm).__name__}; the pair head is HSTU's (fm.model: hstu)")
    for param in fm.parameters():
        param.requires_grad_(False)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    log, cycles = EventLog(events), ReplayClock.from_config(cfg.clock).cycles()
    table = fm.item_embeddings()
    heads, head_info = {}, {}
    for kind in args.residual_heads:
        heads[kind], head_info[kind] = train_head(fm, table, log, cycles[0].start, kind, args)
    out: dict[str, list[float]] = {"dot": [], "pair": [], "recall": []} | {k: [] for k in heads}
    with torch.no_grad():
        for cyc in tqdm(cycles[: args.cycles], desc="cycles"):
            hist, targets, _ = cycle_targets(log, cyc)
            for lo in range(0, len(targets), 128):
                rows = np.arange(lo, min(lo + 128, len(targets)))
                items, times, scores, cand = top_candidates(fm, table, hist, rows, args.candidates)
                found = cand == torch.as_tensor(targets[rows])[:, None]
                _, pair = fm.pair_repr(items, times, cand)
                out["recall"] += found.any(1).double().tolist()
                out["dot"] += ndcg_at_10(scores.gather(1, cand), found).tolist()
                out["pair"] += ndcg_at_10(pair, found).tolist()
                for kind, head in heads.items():
                    out[kind] += ndcg_at_10(head(fm, items, times, cand), found).tolist()
    vs_dot = paired(out["pair"], out["dot"])
    result = {
        "model": "trained here"
        if args.train_fm
        else (str(folder.relative_to(cfg.root)) if folder.is_relative_to(cfg.root) else str(folder)),
        "trained": trained,
        "events": len(out["dot"]),
        "candidates": args.candidates,
        "recall@candidates": float(np.mean(out["recall"])),
        "ndcg@10_dot": float(np.mean(out["dot"])),
        "ndcg@10_pair": float(np.mean(out["pair"])),
        "pair_minus_dot": vs_dot["mean"],
        "pair_minus_dot_ci95": vs_dot["ci95"],
        "residual_heads": {
            kind: head_info[kind]
            | {"train_from": args.train_from, "epochs": args.head_epochs, "lr": args.head_lr[kind]}
            | ({"hidden": args.hidden} if kind == "mlp" else {})
            | {"ndcg@10": float(np.mean(out[kind])), "minus_dot": paired(out[kind], out["dot"])}
            for kind in heads
        },
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
