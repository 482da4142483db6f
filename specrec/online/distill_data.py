"""Build distillation examples for the thin scorer from events known at as_of.

One example per user (the newest known event is the label, the events before it the history, capped at
`max_examples` users, newest first): the FM user state, the top-N retrieved candidates, their item
embeddings, the FM pair vectors and scores of every candidate (the teacher), and the candidates' item
statistics at as_of. The label is the chosen item's column, or -1 when retrieval missed it: it is never
inserted, since an inserted item would be recognisable by its low retrieval score (a label leak).

Serving-time information (`window`): online, the scorer reads the nearline `user_state` and the
speculative pairs precomputed at the start of the request's window, so it never sees the events of the
window before the request. With a window, an example is built the same way: the user state, the
retrieval and the pair vectors from the history before the label's window start, the teacher from the
whole history before the label (the full FM online at the request). The scorer then learns to
approximate the full FM from what serving has, instead of being trained on fresher inputs than it is
served with. Users with no event before their label's window start (a cold start online) are skipped.
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
    known: pd.DataFrame, max_examples: int, max_len: int, window_s: int | None = None
) -> tuple[Sequences, Sequences, np.ndarray]:
    """Histories as serving sees them (before the label's window start; the whole history without a
    window), whole histories before each user's newest event, and the labels, newest users first."""
    ordered = known.sort_values(["user_idx", "event_id"], kind="stable")
    last = ordered.groupby("user_idx")["timestamp"].max().sort_values(ascending=False)
    seconds = ordered["timestamp"].astype("int64").to_numpy() // 1_000_000_000
    item_idx = ordered["item_idx"].to_numpy()
    groups = ordered.groupby("user_idx", sort=False).indices
    served: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    whole: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    labels: list[int] = []
    for user in last.index:
        rows = groups[user]
        if len(rows) < 2:
            continue
        before = rows[:-1]
        if window_s:  # the nearline state of the label's window: events before the window start
            start = seconds[rows[-1]] // window_s * window_s
            visible = before[seconds[before] < start]
            if len(visible) == 0:
                continue
        else:
            visible = before
        for (items, times), part in ((served, visible[-max_len:]), (whole, before[-max_len:])):
            items.append(item_idx[part])
            times.append(seconds[part])
        labels.append(int(item_idx[rows[-1]]))
        if len(labels) >= max_examples:
            break
    return Sequences(*served), Sequences(*whole), np.asarray(labels, dtype=np.int64)


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
    window: pd.Timedelta | None = None,
) -> DistillBatch:
    """Distillation examples at as_of (nothing after as_of is read); `window`: serving-time inputs."""
    when = to_utc(as_of)
    known = EventLog(events).known_at(when)
    window_s = int(window.total_seconds()) if window is not None else None
    served, whole, labels = _user_examples(known, max_examples, fm.config.max_len, window_s)
    table = fm.item_embeddings()  # (n_items+1, D)
    stats = torch.from_numpy(item_stat_table(known, items, when, cadence))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("u", "e", "p", "teacher", "s", "label")}
    for lo in range(0, len(labels), batch):
        rows = np.arange(lo, min(lo + batch, len(labels)))
        hist, ts = history_batch(served, rows, fm.config.max_len)  # (B, T): what serving knows
        u = fm.user_state(hist, ts)  # (B, D)
        scores = u @ table.T
        scores[:, 0] = float("-inf")
        cand = scores.topk(n_candidates, dim=1).indices  # (B, C)
        y = torch.from_numpy(labels[rows])
        found = cand == y.unsqueeze(1)  # (B, C)
        p, teacher = fm.pair_repr(hist, ts, cand)  # (B, C, D), (B, C)
        if window_s:  # the teacher is the full FM at the request: every event before the label
            _, teacher = fm.pair_repr(*history_batch(whole, rows, fm.config.max_len), cand)
        parts["u"].append(u)
        parts["e"].append(table[cand])
        parts["p"].append(p)
        parts["teacher"].append(teacher)
        parts["s"].append(stats[cand])
        parts["label"].append(torch.where(found.any(1), found.float().argmax(1), -1))
    return DistillBatch(**{k: torch.cat(v) for k, v in parts.items()})
