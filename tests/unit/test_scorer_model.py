"""The thin scorer: distillation stays finite when no chosen item was retrieved, and learns the teacher."""

from __future__ import annotations

import math

import torch

from models.scorer import DistillBatch, ScorerConfig, ThinScorer, distill


def _batch(n: int, c: int, d: int, labels: torch.Tensor) -> DistillBatch:
    gen = torch.Generator().manual_seed(0)
    u, e, p = (
        torch.randn(n, d, generator=gen),
        torch.randn(n, c, d, generator=gen),
        torch.randn(n, c, d, generator=gen),
    )
    teacher = (p * e).sum(-1)  # a teacher the scorer can learn from p and e
    return DistillBatch(u, e, p, teacher, torch.zeros(n, c, 5), labels)


def test_no_retrieved_label_still_trains() -> None:
    data = _batch(64, 10, 8, torch.full((64,), -1))
    losses = distill(ThinScorer(ScorerConfig(dim=8)), data, epochs=3)
    assert all(math.isfinite(x) for x in losses)


def test_distillation_lowers_the_loss() -> None:
    data = _batch(256, 10, 8, torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(1)))
    losses = distill(ThinScorer(ScorerConfig(dim=8)), data, epochs=20, hit_rate=1.0)
    assert losses[-1] < 0.8 * losses[0]
