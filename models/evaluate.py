"""Vectorised full-ranking evaluation over all items, and a popularity baseline.

For each user the query vector is scored against the whole item table in one batched matmul; items the
user has already seen are excluded (set to -inf) except the target itself, and the target's 0-based rank
is the number of items scoring strictly higher. HR@k = [rank < k], NDCG@k = [rank < k] / log2(rank + 2),
MRR = 1 / (rank + 1), averaged over users. Counting higher scores gives exactly the position top-k would
report, at O(n_items) per user instead of a sort.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from models.sequences import EvalSet, Sequences, history_batch

KS = (5, 10, 50, 200)


class Retriever(Protocol):
    """Anything with a user query vector and an item table (the two decomposable FM outputs)."""

    def user_state(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, T) histories -> (B, D) query vectors."""
        ...

    def item_embeddings(self) -> torch.Tensor:
        """(n_items+1, D) item table, row 0 = padding."""
        ...


class PopularityScorer:
    """Scores every item by its number of training events: the floor a sequential model must clear."""

    def __init__(self, train: Sequences, n_items: int) -> None:
        counts = np.bincount(np.concatenate(train.items) if len(train) else [], minlength=n_items + 1)
        self.counts = torch.from_numpy(counts[: n_items + 1].astype(np.float32))  # (n_items+1,)

    def user_state(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """The same query for everyone, (B, 1)."""
        return torch.ones(items.shape[0], 1)

    def item_embeddings(self) -> torch.Tensor:
        """Item counts as a (n_items+1, 1) table."""
        return self.counts.unsqueeze(1)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: list[np.ndarray]) -> torch.Tensor:
    """0-based rank (B,) of each target among items 1..n, with seen items other than the target excluded."""
    b = scores.shape[0]
    rows = torch.arange(b)
    target_score = scores[rows, targets].clone()  # (B,)
    lengths = torch.tensor([len(s) for s in seen])
    seen_rows = torch.repeat_interleave(rows, lengths)
    seen_cols = torch.from_numpy(np.concatenate(seen)) if b else torch.empty(0, dtype=torch.long)
    scores[seen_rows, seen_cols] = float("-inf")
    scores[:, 0] = float("-inf")  # padding is never a candidate
    scores[rows, targets] = target_score  # a repeat purchase of the target still counts as a hit
    return (scores > target_score.unsqueeze(1)).sum(1)


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR@k, NDCG@k and MRR averaged over users from 0-based ranks (U,)."""
    r = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = (r < k).double()
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((hit / torch.log2(r + 2)).mean())
    out["mrr"] = float((1.0 / (r + 1)).mean())
    return out


@torch.no_grad()
def compute_ranks(model: Retriever, data: EvalSet, max_len: int, batch_size: int = 1024) -> torch.Tensor:
    """Rank (U,) of every user's target under full ranking."""
    if isinstance(model, nn.Module):
        model.eval()
    table = model.item_embeddings()  # (n_items+1, D)
    ranks = []
    for start in range(0, len(data), batch_size):
        users = np.arange(start, min(start + batch_size, len(data)))
        items, times = history_batch(data.histories, users, max_len)  # (B, T)
        scores = model.user_state(items, times) @ table.T  # (B, n_items+1)
        seen = [data.histories.items[u] for u in users]
        ranks.append(target_ranks(scores, torch.from_numpy(data.targets[users]), seen))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def evaluate(
    model: Retriever, data: EvalSet, max_len: int, batch_size: int = 1024, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k and MRR of a model (or PopularityScorer) on an EvalSet."""
    return metrics_from_ranks(compute_ranks(model, data, max_len, batch_size), ks)
