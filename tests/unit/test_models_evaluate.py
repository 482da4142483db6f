"""Full-ranking metrics: a hand-worked example, a plain-loop reference and the popularity scorer."""

import math

import numpy as np
import pytest
import torch

from models.evaluate import PopularityScorer, evaluate, metrics_from_ranks, target_ranks
from models.sequences import EvalSet, Sequences


def test_hand_worked_example() -> None:
    # items 1..5 scored 0.9, 0.8, 0.7, 0.6, 0.5 for every user
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5]] * 3)
    seen = [np.array([1]), np.array([1, 2]), np.array([4])]
    targets = torch.tensor([3, 1, 5])
    # user 0: item 1 seen -> only item 2 above item 3: rank 1
    # user 1: target 1 is a repeat, still ranked; nothing above it: rank 0
    # user 2: item 4 seen -> items 1, 2, 3 above item 5: rank 3
    ranks = target_ranks(scores, targets, seen)
    assert ranks.tolist() == [1, 0, 3]
    m = metrics_from_ranks(ranks, ks=(1, 3))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)


def _reference_metrics(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray], ks: tuple) -> dict:
    out: dict[str, list[float]] = {}
    for s, t, h in zip(scores, targets, seen, strict=True):
        pool = [i for i in range(1, len(s)) if i == t or i not in set(h.tolist())]
        ranked = sorted(pool, key=lambda i: -s[i])
        r = ranked.index(t)
        for k in ks:
            out.setdefault(f"hr@{k}", []).append(float(r < k))
            out.setdefault(f"ndcg@{k}", []).append(1 / math.log2(r + 2) if r < k else 0.0)
        out.setdefault("mrr", []).append(1 / (r + 1))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_matches_plain_loop_reference() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, ks = 64, 40, (1, 5, 10, 20)
    scores = rng.normal(size=(n_users, n_items + 1)).astype(np.float32)
    seen = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 15)) for _ in range(n_users)]
    targets = np.array(
        [rng.choice(h) if u % 5 == 0 else rng.integers(1, n_items + 1) for u, h in enumerate(seen)]
    )
    got = metrics_from_ranks(
        target_ranks(torch.from_numpy(scores.copy()), torch.from_numpy(targets), seen), ks
    )
    want = _reference_metrics(scores, targets, seen, ks)
    assert got == pytest.approx(want)


def test_popularity_scorer_ranks_by_training_counts() -> None:
    train = Sequences([np.array([1, 2, 2, 3, 3, 3])], [np.arange(6)])
    data = EvalSet(
        Sequences([np.array([4]), np.array([3])], [np.array([0]), np.array([0])]), np.array([2, 1])
    )
    m = evaluate(PopularityScorer(train, n_items=4), data, max_len=5, ks=(1, 2))
    # user 0 (saw 4): 3 > 2 -> rank 1; user 1 (saw 3): 2 > 1 -> rank 1
    assert m["hr@1"] == 0.0 and m["hr@2"] == 1.0
