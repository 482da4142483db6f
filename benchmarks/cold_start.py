"""Cold-start benchmark: does the semantic-ID codebook give items the FM never saw a useful embedding?

On the replay cycles, every event whose user has earlier events is ranked against the catalogue (the
user's history = their events before it; items not yet seen anywhere at the event's time and the
user's earlier items are excluded). Events are split by their item: *cold* when the item was first
seen at or after the FM's training cutoff (clock.start: the FM has no trained embedding for it),
*warm* otherwise.

Two FMs are trained here on the same history with the same settings and time budget (params.yaml
`fm`): one with item ids only, one with ids plus semantic-code embeddings (models/hstu.py ItemEmbedding)
from a codebook trained at the cutoff on the first FM's item embeddings and the items' MiniLM text
embeddings. During training items first seen later carry the null code, so nothing of them is learned.
Then the cold items are ranked with:

- id_only: the id-only FM, cold rows freshly initialised (N(0, 0.02), what a new item row gets);
- semantic_id: the FM with codes; cold items get their codes from the frozen codebook (from their text,
  as codebook_refresh does) and a zero id row, so they embed as the sum of their code embeddings;
- content_only: the id-only FM, cold rows from a ridge map of the MiniLM text embedding to the id
  embedding, fitted on warm items.
It also prints `semantic_id_posthoc`: the id-only FM with code embeddings fitted in closed form
(specrec.codebook.fm_codes, what materialization does for an FM trained without codes).

Target (issue 7): semantic_id NDCG@10 >= 2x id_only on cold events, and no loss on warm events.
Writes benchmarks/results/cold_start.json. Run from the project root after `dvc repro item_text_embed`:

    python benchmarks/cold_start.py
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

from models.evaluate import metrics_from_ranks, target_ranks  # noqa: E402
from models.sequences import Sequences, history_batch  # noqa: E402
from models.train import RecModel, TrainConfig, build_model, train  # noqa: E402
from specrec.clock import EventLog, ReplayClock  # noqa: E402
from specrec.codebook.build import FMInfo, build_inputs, train_codebook  # noqa: E402
from specrec.codebook.fm_codes import code_table, with_code_embeddings  # noqa: E402
from specrec.codebook.text import content_for  # noqa: E402
from specrec.config import Config, load_config, parse_timestamp  # noqa: E402
from specrec.fm.data import LooData, load_loo  # noqa: E402
from specrec.io import read_parquet  # noqa: E402

log = logging.getLogger("cold_start")
K = 10
RIDGE = 1.0


def replay_targets(events: pd.DataFrame, cycles: list) -> tuple[Sequences, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """Histories, target items and target times (unix s) of every replay event with an earlier event."""
    log_ = EventLog(events)
    known = log_.known_at(cycles[-1].as_of).sort_values(["user_idx", "timestamp", "event_id"], kind="stable")
    seconds = (known["timestamp"].astype("int64") // 1_000_000_000).to_numpy()
    in_replay = (known["timestamp"] >= cycles[0].start).to_numpy()
    items, users = known["item_idx"].to_numpy(np.int64), known["user_idx"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    rows = [r for r in np.flatnonzero(in_replay) if r > first[r]]
    hist = Sequences([items[first[r] : r] for r in rows], [seconds[first[r] : r] for r in rows])
    return hist, items[rows], seconds[rows]


@torch.no_grad()
def ranks(
    model: RecModel, hist: Sequences, targets: np.ndarray, times: np.ndarray, born: np.ndarray
) -> torch.Tensor:
    """0-based rank of each target among items that exist at its time (first seen at or before it)."""
    model.eval()
    table = model.item_embeddings()  # (n_items+1, D)
    out = []
    for start in range(0, len(targets), 512):
        rows = np.arange(start, min(start + 512, len(targets)))
        items, ts = history_batch(hist, rows, model.config.max_len)
        scores = model.user_state(items, ts) @ table.T  # (B, n_items+1)
        scores[torch.from_numpy(born[None, :] > times[rows, None])] = float(
            "-inf"
        )  # not yet in the catalogue
        out.append(target_ranks(scores, torch.from_numpy(targets[rows]), [hist.items[r] for r in rows]))
    return torch.cat(out)


def with_rows(model: RecModel, rows: np.ndarray, values: torch.Tensor) -> RecModel:
    """A copy of the model whose id embeddings of `rows` are replaced (no codes)."""
    import copy

    new = copy.deepcopy(model)
    with torch.no_grad():
        new.item_emb.ids.weight[torch.from_numpy(rows)] = values
    return new


def content_map(
    cfg, items: pd.DataFrame, model: RecModel, warm: np.ndarray, cold: np.ndarray
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Ridge regression content (384) -> id embedding (D) fitted on warm items; cold rows predicted."""
    content = content_for(cfg, items)
    pos = pd.Series(np.arange(len(items)), index=items["item_idx"].to_numpy())
    x = torch.from_numpy(content.embeddings).double()  # (N, 384)
    ids = model.item_emb.ids.weight.detach().double()
    xw, yw = x[pos[warm].to_numpy()], ids[torch.from_numpy(warm)]
    mean_x, mean_y = xw.mean(0), yw.mean(0)
    a = xw - mean_x
    w = torch.linalg.solve(a.T @ a + RIDGE * torch.eye(a.shape[1], dtype=a.dtype), a.T @ (yw - mean_y))
    return ((x[pos[cold].to_numpy()] - mean_x) @ w + mean_y).float()


def train_fm_variant(
    cfg: Config, data: LooData, codes: torch.Tensor | None, levels: int, budget: float | None, k: int = 0
) -> RecModel:
    """Train the FM of params.yaml on history, with semantic codes (K + a null code) when given."""
    arch = cfg.fm.model_config(data.n_items)
    if codes is not None:
        arch |= {"n_code_levels": levels, "codebook_size": k + 1}
    torch.manual_seed(cfg.fm.train.seed)  # the same initialisation for both variants
    model = build_model(cfg.fm.model, arch, codes)
    tcfg = TrainConfig(**dataclasses.asdict(cfg.fm.train) | {"time_budget_s": budget, "progress": False})
    result = train(model, data.train, data.valid, tcfg)
    log.info(
        "FM %s: %d epochs, valid NDCG@10 %.4f",
        "with codes" if codes is not None else "ids only",
        result.n_epochs,
        result.best_metrics.get("ndcg@10", 0.0),
    )
    return model.eval()


def main() -> None:
    """Train the codebook at the FM's cutoff, code cold items, rank the replay events three ways."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--budget", type=float, default=None, help="FM training seconds (default: params)")
    parser.add_argument("--epochs", type=int, default=None, help="RQ-VAE epochs (default: params.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the id_only random rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cold_start.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    cfg = load_config(args.params)
    if args.epochs:
        cfg = dataclasses.replace(cfg, codebook=dataclasses.replace(cfg.codebook, epochs=args.epochs))
    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    cutoff = parse_timestamp("clock.start", cfg.clock.start)
    budget = args.budget if args.budget is not None else cfg.fm.train.time_budget_s
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    seen = items[items["first_seen"].notna()]
    warm_items, cold_items = seen[seen["first_seen"] < cutoff], seen[seen["first_seen"] >= cutoff]
    log.info("cutoff %s: %d warm and %d cold items", cutoff, len(warm_items), len(cold_items))

    plain = train_fm_variant(cfg, data, None, 0, budget)
    fm = FMInfo("benchmark", cutoff, plain)
    start = time.perf_counter()
    trained = train_codebook(cfg, warm_items, fm, cutoff, progress=True)
    codebook = trained.codebook
    n_rows = plain.config.n_items + 1
    warm_codes = np.full((n_rows, codebook.levels), -1, dtype=np.int64)
    warm_codes[codebook.table["item_idx"].to_numpy()] = codebook.codes()
    codebook.assign(build_inputs(cfg, cold_items, fm), cutoff, reference=False)  # frozen, from text alone
    health = codebook.health()
    log.info("codebook trained and cold items coded in %.0f s: %s", time.perf_counter() - start, health)
    codes = np.full((n_rows, codebook.levels), -1, dtype=np.int64)
    codes[codebook.table["item_idx"].to_numpy()] = codebook.codes()
    k = codebook.codebook_size
    with_codes = train_fm_variant(cfg, data, code_table(warm_codes, n_rows, k), codebook.levels, budget, k)

    trained_rows = np.zeros(n_rows, dtype=bool)
    trained_rows[warm_items["item_idx"].to_numpy()] = True
    cold_rows = cold_items["item_idx"].to_numpy(np.int64)
    gen = torch.Generator().manual_seed(args.seed)
    random_rows = torch.randn(len(cold_rows), plain.config.dim, generator=gen) * 0.02
    content_rows = content_map(cfg, items, plain, warm_items["item_idx"].to_numpy(), cold_rows)
    variants = {
        "semantic_id": with_code_embeddings(with_codes, codes, trained_rows, k),
        "id_only": with_rows(plain, cold_rows, random_rows),
        "content_only": with_rows(plain, cold_rows, content_rows),
        "semantic_id_posthoc": with_code_embeddings(
            with_rows(plain, cold_rows, random_rows), codes, trained_rows, k
        ),
    }

    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    cycles = ReplayClock.from_config(cfg.clock).cycles()
    hist, targets, times = replay_targets(events, cycles)
    born = np.full(n_rows, np.iinfo(np.int64).max, dtype=np.int64)
    born[seen["item_idx"].to_numpy()] = seen["first_seen"].astype("int64").to_numpy() // 1_000_000_000
    is_cold = np.isin(targets, cold_rows)
    result: dict[str, dict[str, float | int | list[float]] | str] = {"cold": {}, "warm": {}}
    for name, model in variants.items():
        r = ranks(model, hist, targets, times, born)
        for group, sel in (("cold", is_cold), ("warm", ~is_cold)):
            m = metrics_from_ranks(r[torch.from_numpy(sel)], (K,))
            if name != "semantic_id_posthoc":  # printed only: the results file has the keys
                result[group][f"{name}_ndcg@{K}"] = m[f"ndcg@{K}"]  # type: ignore[index]
            ndcg, hr = m[f"ndcg@{K}"], m[f"hr@{K}"]
            print(f"{group:5s} {name:19s} NDCG@10 {ndcg:.4f}  HR@10 {hr:.4f}  n={int(sel.sum())}")
    result["cold"]["n"] = int(is_cold.sum())  # type: ignore[index]
    result["warm"]["n"] = int((~is_cold).sum())  # type: ignore[index]
    result["codebook"] = {
        "utilisation_per_level": health.utilisation_per_level,
        "entropy_per_level": health.entropy_per_level,
        "collision_rate": health.collision_rate,
        "recon_error": health.recon_error,
    }
    result["command"] = "python " + " ".join(
        [str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0]]
        + sys.argv[1:]
    )
    cold, warm = result["cold"], result["warm"]
    ratio = cold["semantic_id_ndcg@10"] / max(cold["id_only_ndcg@10"], 1e-12)  # type: ignore[index,operator]
    print(
        f"cold: semantic_id / id_only = {ratio:.1f}x (target >= 2x); warm: semantic_id - id_only = "
        f"{warm['semantic_id_ndcg@10'] - warm['id_only_ndcg@10']:+.4f} (target >= 0)"
    )  # type: ignore[index,operator]
    print("codebook:", json.dumps(result["codebook"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
