"""Per-cycle next-event evaluation for the replay: how well a model ranks each event of a cycle.

Every event of the cycle ending at `as_of` is a target. Its history is that user's events before it
(events earlier in the same cycle included: that is what a request at that moment would see), the
user's previously seen items are excluded, and all items are ranked. Events of users with no earlier
event cannot be ranked by a sequential model and are counted separately (`cold_user_events`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from models.evaluate import KS, Retriever, metrics_from_ranks, target_ranks
from models.sequences import Sequences, history_batch
from specrec.clock import Cycle, EventLog


def cycle_targets(log: EventLog, cycle: Cycle) -> tuple[Sequences, np.ndarray, int]:
    """Histories and targets of the cycle's events, and how many events had no history."""
    known = log.known_at(cycle.as_of).sort_values(["user_idx", "timestamp", "event_id"], kind="stable")
    seconds = (known["timestamp"].astype("int64") // 1_000_000_000).to_numpy()
    in_cycle = (known["timestamp"] >= cycle.start).to_numpy()
    items_all, users = known["item_idx"].to_numpy(np.int64), known["user_idx"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # first row of each user
    first_of_user = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    hist_items, hist_ts, targets, cold = [], [], [], 0
    for row in np.flatnonzero(in_cycle):
        lo = first_of_user[row]
        if row == lo:
            cold += 1
            continue
        hist_items.append(items_all[lo:row])
        hist_ts.append(seconds[lo:row])
        targets.append(items_all[row])
    return Sequences(hist_items, hist_ts), np.asarray(targets, dtype=np.int64), cold


@torch.no_grad()
def next_event_metrics(
    model: Retriever,
    events: pd.DataFrame,
    cycle: Cycle,
    max_len: int,
    batch_size: int = 512,
    ks: tuple[int, ...] = KS,
) -> dict[str, Any]:
    """HR@k, NDCG@k, MRR over the cycle's events, plus event counts."""
    histories, targets, cold = cycle_targets(EventLog(events), cycle)
    table = model.item_embeddings()  # (n_items+1, D)
    ranks = []
    for start in range(0, len(targets), batch_size):
        rows = np.arange(start, min(start + batch_size, len(targets)))
        items, times = history_batch(histories, rows, max_len)  # (B, T)
        scores = model.user_state(items, times) @ table.T  # (B, n_items+1)
        ranks.append(
            target_ranks(scores, torch.from_numpy(targets[rows]), [histories.items[r] for r in rows])
        )
    metrics = metrics_from_ranks(torch.cat(ranks), ks) if ranks else {}
    return metrics | {"events": len(targets) + cold, "events_scored": len(targets), "cold_user_events": cold}
