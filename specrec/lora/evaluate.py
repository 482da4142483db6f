"""Score a model on a window of newest events: NDCG@10 / HR@10 and each event's error for drift detection.

The same protocol as specrec.fm.replay_eval.next_event_metrics (every event is a target, its history the
user's earlier events, seen items excluded, all items ranked), keeping the per-event ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.evaluate import Retriever, metrics_from_ranks, target_ranks
from models.sequences import history_batch
from specrec.clock import Cycle, EventLog
from specrec.fm.replay_eval import cycle_targets

KS = (10,)


@dataclass(frozen=True)
class HoldoutScore:
    """NDCG@10 and HR@10 (NaN when nothing could be scored) and the per-event errors 1 - NDCG@10."""

    metrics: dict[str, float]
    errors: list[float]

    @property
    def ndcg(self) -> float:
        """NDCG@10."""
        return self.metrics["ndcg@10"]


@torch.no_grad()
def event_ranks(
    model: Retriever, events: pd.DataFrame, window: Cycle, max_len: int, batch_size: int = 512
) -> torch.Tensor:
    """0-based rank of every event in [window.start, window.as_of) that has a history (grouped by user)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    histories, targets, _ = cycle_targets(EventLog(events), window)
    table = model.item_embeddings()  # (n_items+1, D)
    ranks = []
    for start in range(0, len(targets), batch_size):
        rows = np.arange(start, min(start + batch_size, len(targets)))
        items, times = history_batch(histories, rows, max_len)  # (B, T)
        scores = model.user_state(items, times) @ table.T  # (B, n_items+1)
        seen = [histories.items[r] for r in rows]
        ranks.append(target_ranks(scores, torch.from_numpy(targets[rows]), seen))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def score(model: Retriever, events: pd.DataFrame, window: Cycle, max_len: int) -> HoldoutScore:
    """NDCG@10, HR@10 and per-event errors of `model` on the events of `window`."""
    ranks = event_ranks(model, events, window, max_len)
    if len(ranks) == 0:
        return HoldoutScore({"ndcg@10": float("nan"), "hr@10": float("nan")}, [])
    r = ranks.double()
    ndcg = torch.where(r < 10, 1.0 / torch.log2(r + 2), torch.zeros_like(r))
    return HoldoutScore(metrics_from_ranks(ranks, KS), [float(1.0 - v) for v in ndcg])


def target_users(events: pd.DataFrame, window: Cycle) -> np.ndarray:
    """The user_idx of each event `event_ranks` scores, in the same order (for per-user resampling)."""
    known = EventLog(events).known_at(window.as_of)
    known = known.sort_values(["user_idx", "timestamp", "event_id"], kind="stable")
    users = known["user_idx"].to_numpy()
    has_history = np.r_[False, users[1:] == users[:-1]]  # not the user's first known event
    return users[has_history & (known["timestamp"] >= window.start).to_numpy()]


def paired_interval(
    before: HoldoutScore,
    after: HoldoutScore,
    users: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of NDCG@10(after) - NDCG@10(before) on the same scored events, resampling whole
    users (`users`: each event's user, as target_users gives them): a user's events rise and fall together,
    so resampling events alone would call a gain carried by one user certain. NaN when nothing was scored."""
    # errors are 1 - NDCG@10 per event: after - before in NDCG is before - after in errors
    d = np.asarray(before.errors, dtype=float) - np.asarray(after.errors, dtype=float)
    if len(before.errors) != len(after.errors) or len(d) != len(users):
        raise ValueError(
            f"paired_interval: {len(before.errors)} and {len(after.errors)} scored events for "
            f"{len(users)} users' events; both models must be scored on the same window"
        )
    if len(d) == 0:
        return math.nan, math.nan
    _, per_event = np.unique(users, return_inverse=True)
    sums, counts = np.bincount(per_event, weights=d), np.bincount(per_event)
    pick = np.random.default_rng(seed).integers(0, len(sums), (n_boot, len(sums)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
