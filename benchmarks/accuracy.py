"""Accuracy benchmark: the HSTU foundation model (`fm`) against a full-cross-entropy SASRec baseline.

Leave-one-out full ranking (all items, seen items excluded) on Amazon Sports and Toys (the TIGER
benchmark files) and on MovieLens ml-latest-small. Both models get the same wall-clock training budget
per dataset; hyper-parameters and the fm loss are chosen on the validation split only, test metrics are
reported for the epoch with the best validation NDCG@10. Writes benchmarks/results/accuracy.json:
{"<dataset>": {"fm": {...}, "sasrec": {...}}, "machine": ..., "command": ...}.

    python benchmarks/accuracy.py                     # all datasets, 60 min per model on Amazon
    python benchmarks/accuracy.py --datasets toys --budget-min 15
    python benchmarks/accuracy.py --quick             # smoke run, about a minute per model
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models.evaluate import PopularityScorer, evaluate  # noqa: E402
from models.hstu import HSTU  # noqa: E402
from models.sequences import Sequences, leave_one_out  # noqa: E402
from models.train import TrainConfig, build_model, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"
DAY = 86_400
T0 = 1_500_000_000
# (users, items, interactions) of the published Amazon files; a mismatch means a different preprocessing.
AMAZON = {
    "sports": ("amazon/Sports_and_Outdoors.txt", (35_598, 18_357, 296_337)),
    "toys": ("amazon/Toys_and_Games.txt", (19_412, 11_924, 167_597)),
}
MOVIELENS = "ml-latest-small/ratings.csv"
DATASETS = ("sports", "toys", "ml-latest-small")


@dataclass(frozen=True)
class Setup:
    """Model and training settings of one dataset (chosen on validation)."""

    max_len: int
    dim: int
    n_layers: int
    n_heads: int
    dropout: float
    lr: float
    batch_size: int
    patience: int
    random_windows: bool = False  # long histories: a random max_len window per epoch (all events train)


SETUPS = {
    "sports": Setup(
        max_len=50, dim=64, n_layers=2, n_heads=2, dropout=0.4, lr=2e-3, batch_size=128, patience=5
    ),
    "toys": Setup(
        max_len=50, dim=64, n_layers=2, n_heads=2, dropout=0.4, lr=2e-3, batch_size=128, patience=5
    ),
    # MovieLens histories are long (median 70, up to 2,698 ratings): training on each user's last window
    # sees 59% of the events at max_len 200, 41% at 100; random windows of 100 see all of them over the
    # epochs (README "Benchmarks" compares the two).
    "ml-latest-small": Setup(
        max_len=100,
        dim=64,
        n_layers=2,
        n_heads=2,
        dropout=0.2,
        lr=1e-3,
        batch_size=64,
        patience=10,
        random_windows=True,
    ),
}


def load_amazon(path: Path, expected: tuple[int, int, int]) -> tuple[Sequences, int]:
    """Read `user item item ...` lines; synthetic timestamps one day apart per position."""
    items = [np.array(line.split()[1:], dtype=np.int64) for line in path.read_text().splitlines() if line]
    n_items = int(max(s.max() for s in items))
    counts = (len(items), n_items, int(sum(len(s) for s in items)))
    if counts != expected:
        raise ValueError(f"{path}: (users, items, interactions)={counts}, expected {expected}")
    times = [T0 + DAY * np.arange(len(s), dtype=np.int64) for s in items]
    return Sequences(items, times), n_items


def load_movielens(path: Path) -> tuple[Sequences, int]:
    """Read ratings.csv; movies re-indexed 1..n by id, each user's events sorted by timestamp (stable)."""
    with path.open() as f:
        rows = np.array([(int(r[0]), int(r[1]), int(r[3])) for r in csv.reader(f) if r[0] != "userId"])
    movie_ids = np.unique(rows[:, 1])
    item = np.searchsorted(movie_ids, rows[:, 1]) + 1
    order = np.lexsort((rows[:, 2], rows[:, 0]))  # by user, then timestamp; ties keep file order
    users, starts = np.unique(rows[order, 0], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    seqs = [order[a:b] for a, b in zip(starts, bounds, strict=True)]
    return Sequences([item[s] for s in seqs], [rows[s, 2] for s in seqs]), len(movie_ids)


def load(name: str) -> tuple[Sequences, int]:
    """Load a benchmark dataset by name."""
    if name in AMAZON:
        rel, expected = AMAZON[name]
        return load_amazon(DATA_DIR / rel, expected)
    return load_movielens(DATA_DIR / MOVIELENS)


def model_config(kind: str, setup: Setup, n_items: int, loss: str) -> dict[str, Any]:
    """Architecture dict for build_model: HSTU scores by cosine/temperature, SASRec by dot product."""
    cfg: dict[str, Any] = {
        "n_items": n_items,
        "max_len": setup.max_len,
        "dim": setup.dim,
        "n_layers": setup.n_layers,
        "n_heads": setup.n_heads,
        "dropout": setup.dropout,
    }
    if kind == "hstu":
        cfg.update(l2_norm=True, temperature=0.05)
        cfg.update({k: v for k, v in FM_OVERRIDES.items() if k in ("l2_norm", "temperature")})
    return cfg


# --fm-set KEY=VALUE: the FM's settings changed for an ablation (SASRec keeps the dataset's Setup)
FM_OVERRIDES: dict[str, Any] = {}
FM_KEYS = {"l2_norm": bool, "temperature": float, "pair_loss_weight": float, "dropout": float, "lr": float}


def parse_override(text: str) -> tuple[str, Any]:
    """KEY=VALUE of --fm-set, typed; a clear error for an unknown key or a bad value."""
    key, sep, value = text.partition("=")
    if not sep or key not in FM_KEYS:
        raise SystemExit(f"--fm-set {text!r}: expected KEY=VALUE with KEY one of {sorted(FM_KEYS)}")
    if FM_KEYS[key] is bool:
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"--fm-set {text!r}: {key} takes true or false")
        return key, value.lower() == "true"
    try:
        return key, float(value)
    except ValueError:
        raise SystemExit(f"--fm-set {text!r}: {key} takes a number") from None


def pair_cost(model: HSTU, sample: Sequences, max_len: int, n_cands: int = 100) -> dict[str, float]:
    """Microseconds per (user, item) pair: M-FALCON pair_repr versus the decomposable dot product."""
    from models.sequences import history_batch

    users = np.arange(min(256, len(sample)))
    items, times = history_batch(sample, users, max_len)
    cands = torch.randint(1, model.config.n_items + 1, (len(users), n_cands))
    with torch.no_grad():
        t = time.perf_counter()
        model.pair_repr(items, times, cands)
        pair = time.perf_counter() - t
        table = model.item_embeddings()
        t = time.perf_counter()
        u = model.user_state(items, times)
        (u.unsqueeze(1) * table[cands]).sum(-1)
        dot = time.perf_counter() - t
    n = len(users) * n_cands
    return {"pair_us_per_pair": 1e6 * pair / n, "dot_us_per_pair_incl_user_state": 1e6 * dot / n}


def train_config(kind: str, loss: str, setup: Setup, budget_s: float | None, max_epochs: int) -> TrainConfig:
    """The training settings every benchmark model gets (the CI test trains a small setup with them)."""
    return TrainConfig(
        loss=loss,
        lr=setup.lr,
        batch_size=setup.batch_size,
        max_epochs=max_epochs,
        patience=setup.patience,
        time_budget_s=budget_s,
        n_uniform_negatives=1024,
        n_inbatch_negatives=1024,
        pair_loss_weight=FM_OVERRIDES.get("pair_loss_weight", 0.1) if kind == "hstu" else 0.0,
        bf16_logits=True,
        random_windows=setup.random_windows,
        progress=False,
    )


def run_one(
    kind: str, loss: str, data: tuple, n_items: int, setup: Setup, budget_s: float, max_epochs: int
) -> dict[str, Any]:
    """Train one model under the budget; return test metrics at the best validation epoch, and costs."""
    train_data, valid, test = data
    if kind == "hstu":
        changed = {k: v for k, v in FM_OVERRIDES.items() if k in ("dropout", "lr")}
        setup = dataclasses.replace(setup, **changed)
    torch.manual_seed(0)
    model = build_model(kind, model_config(kind, setup, n_items, loss))
    cfg = train_config(kind, loss, setup, budget_s, max_epochs)
    t0 = time.perf_counter()

    def log(r: Any) -> None:
        print(
            f"  [{kind}/{loss}] epoch {r.epoch} loss {r.loss:.4f} tok/s {r.tokens_per_s:.0f} "
            f"valid ndcg@10 {r.metrics['ndcg@10']:.4f} hr@10 {r.metrics['hr@10']:.4f} "
            f"t={time.perf_counter() - t0:.0f}s",
            flush=True,
        )

    result = train(model, train_data, valid, cfg, on_epoch=log)
    t = time.perf_counter()
    m = evaluate(model, test, setup.max_len)
    out: dict[str, Any] = {k: round(m[k], 5) for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10")}
    out.update(
        {
            "train_seconds": round(result.wall_seconds, 1),
            "optimiser_seconds": round(result.train_seconds, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "epochs": result.n_epochs,
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "loss": loss,
            "valid_ndcg@10": round(result.best_metrics["ndcg@10"], 5),
            "valid_hr@10": round(result.best_metrics["hr@10"], 5),
            "test_eval_seconds": round(time.perf_counter() - t, 2),
            "config": model_config(kind, setup, n_items, loss)
            | {"lr": setup.lr, "batch": setup.batch_size, "patience": setup.patience}
            | ({"pair_loss_weight": cfg.pair_loss_weight} if kind == "hstu" else {}),
        }
    )
    if isinstance(model, HSTU):
        out.update(pair_cost(model, test.histories, setup.max_len))
    print(f"  [{kind}/{loss}] test {json.dumps({k: out[k] for k in ('hr@10', 'ndcg@10')})}", flush=True)
    return out


def run_dataset(name: str, models: list[str], fm_losses: list[str], budget_s: float, max_epochs: int) -> dict:
    """Benchmark fm (best loss on validation) and full-CE SASRec on one dataset."""
    seqs, n_items = load(name)
    data = leave_one_out(seqs)
    setup = SETUPS[name]
    pop = evaluate(PopularityScorer(data[0], n_items), data[2], setup.max_len)
    print(f"{name}: {len(seqs)} users, {n_items} items; popularity test hr@10 {pop['hr@10']:.4f}", flush=True)
    out: dict[str, Any] = {
        "popularity": {k: round(pop[k], 5) for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10")}
    }
    if "fm" in models:
        runs = {loss: run_one("hstu", loss, data, n_items, setup, budget_s, max_epochs) for loss in fm_losses}
        best = max(runs, key=lambda loss: runs[loss]["valid_ndcg@10"])  # chosen on validation, not test
        out["fm"] = runs[best] | {"loss_comparison": {k: _brief(v) for k, v in runs.items()}}
    if "sasrec" in models:
        out["sasrec"] = run_one("sasrec", "full_ce", data, n_items, setup, budget_s, max_epochs)
    return out


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    """The fields that compare two losses."""
    keys = ("valid_ndcg@10", "valid_hr@10", "hr@10", "ndcg@10", "epochs", "train_seconds", "tokens_per_s")
    return {k: run[k] for k in keys}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {DATASETS}")
    p.add_argument("--models", default="fm,sasrec", help="comma-separated subset of fm,sasrec")
    p.add_argument("--fm-losses", default="full_ce,sampled_softmax", help="fm losses to try (best on valid)")
    p.add_argument("--budget-min", type=float, default=60.0, help="training minutes per model on Amazon")
    p.add_argument(
        "--ml-budget-min", type=float, default=3.0, help="training minutes per model on ml-latest-small"
    )
    p.add_argument(
        "--max-epochs", type=int, default=200, help="epoch cap (early stopping usually ends sooner)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 minute, 3 epochs per model")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (datasets merged into it)")
    p.add_argument(
        "--fm-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change an FM setting for an ablation (repeatable): {sorted(FM_KEYS)}",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the selected datasets and merge their results into the JSON file."""
    args = parse_args(argv)
    FM_OVERRIDES.update(parse_override(text) for text in args.fm_set)
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.datasets.split(","):
        if name not in DATASETS:
            raise SystemExit(f"--datasets: unknown dataset {name!r}, use some of {DATASETS}")
        minutes = args.ml_budget_min if name == "ml-latest-small" else args.budget_min
        budget_s, epochs = (60.0, 3) if args.quick else (60.0 * minutes, args.max_epochs)
        results[name] = run_dataset(name, args.models.split(","), args.fm_losses.split(","), budget_s, epochs)
        results[name]["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        results["machine"] += f", {args.threads} threads, no GPU" if not torch.cuda.is_available() else ""
        results["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
