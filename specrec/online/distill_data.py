"""Build distillation examples for the thin scorer from events known at as_of.

Examples from each user's newest known events (`per_user` of them, one by default; the event is the
label, the events before it the history), newest users first and capped at `max_examples`: the FM user
state, the top-N retrieved candidates, their item embeddings, the FM pair vectors and scores of every
candidate (the teacher), and the candidates' item statistics at as_of. The label is the chosen item's
column, or -1 when retrieval missed it: it is never inserted, since an inserted item would be
recognisable by its low retrieval score (a label leak).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from models.hstu import HSTU
from models.scorer import DistillBatch, stats_features
from models.sequences import Sequences, history_batch
from specrec.clock import EventLog, to_utc
from specrec.nearline.item_stats import compute_item_stats


def _user_examples(
    known: pd.DataFrame, max_examples: int, max_len: int, per_user: int = 1
) -> tuple[Sequences, np.ndarray]:
    """Histories and labels of each user's `per_user` newest events (each with the events before it),
    newest users first, a user's examples together."""
    ordered = known.sort_values(["user_idx", "event_id"], kind="stable")
    last = ordered.groupby("user_idx")["timestamp"].max().sort_values(ascending=False)
    seconds = ordered["timestamp"].astype("int64").to_numpy() // 1_000_000_000
    groups = ordered.groupby("user_idx", sort=False).indices
    item_idx = ordered["item_idx"].to_numpy()
    items, times, labels = [], [], []
    for user in last.index:
        rows = groups[user]
        for end in range(len(rows) - 1, max(0, len(rows) - 1 - per_user), -1):  # newest label first
            hist = rows[:end][-max_len:]
            items.append(item_idx[hist])
            times.append(seconds[hist])
            labels.append(int(item_idx[rows[end]]))
            if len(labels) >= max_examples:
                return Sequences(items, times), np.asarray(labels, dtype=np.int64)
    return Sequences(items, times), np.asarray(labels, dtype=np.int64)


def item_stat_table(
    known: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp, cadence: pd.Timedelta
) -> np.ndarray:
    """(n_items+1, F) stats features by item_idx at as_of (zeros for items without events)."""
    stats = compute_item_stats(known, as_of, cadence).merge(items[["item_id", "item_idx"]], on="item_id")
    table = np.zeros((len(items) + 1, 5), dtype=np.float32)
    table[stats["item_idx"].to_numpy()] = stats_features(
        stats["count_1c"].to_numpy(np.float64),
        stats["count_7c"].to_numpy(np.float64),
        stats["trend"].to_numpy(np.float64),
        stats["mean_rating"].to_numpy(np.float64),
    )
    return table


@torch.no_grad()
def build_examples(
    fm: HSTU,
    events: pd.DataFrame,
    items: pd.DataFrame,
    as_of: object,
    cadence: pd.Timedelta,
    n_candidates: int,
    max_examples: int,
    batch: int = 32,
    per_user: int = 1,
) -> DistillBatch:
    """Distillation examples at as_of (nothing after as_of is read)."""
    when = to_utc(as_of)
    known = EventLog(events).known_at(when)
    seqs, labels = _user_examples(known, max_examples, fm.config.max_len, per_user)
    table = fm.item_embeddings()  # (n_items+1, D)
    stats = torch.from_numpy(item_stat_table(known, items, when, cadence))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("u", "e", "p", "teacher", "s", "label")}
    for lo in range(0, len(seqs), batch):
        rows = np.arange(lo, min(lo + batch, len(seqs)))
        hist, ts = history_batch(seqs, rows, fm.config.max_len)  # (B, T)
        u = fm.user_state(hist, ts)  # (B, D)
        scores = u @ table.T
        scores[:, 0] = float("-inf")
        cand = scores.topk(n_candidates, dim=1).indices  # (B, C)
        y = torch.from_numpy(labels[rows])
        found = cand == y.unsqueeze(1)  # (B, C)
        p, teacher = fm.pair_repr(hist, ts, cand)  # (B, C, D), (B, C)
        parts["u"].append(u)
        parts["e"].append(table[cand])
        parts["p"].append(p)
        parts["teacher"].append(teacher)
        parts["s"].append(stats[cand])
        parts["label"].append(torch.where(found.any(1), found.float().argmax(1), -1))
    return DistillBatch(**{k: torch.cat(v) for k, v in parts.items()})
