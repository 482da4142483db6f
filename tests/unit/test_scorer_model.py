"""The thin scorer: distillation stays finite when no chosen item was retrieved, and learns the teacher."""

from __future__ import annotations

import math

import numpy as np
import torch

from models.scorer import DistillBatch, NumpyScorer, ScorerConfig, ThinScorer, distill


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


def test_numpy_request_path_matches_the_torch_model() -> None:
    """The served NumPy copy gives the trained model's scores, with hits, misses and no pairs at all."""
    data = _batch(64, 12, 8, torch.randint(0, 12, (64,), generator=torch.Generator().manual_seed(2)))
    data.s.uniform_(0, 3)
    model = ThinScorer(ScorerConfig(dim=8))
    distill(model, data, epochs=3)  # non-trivial weights, including the miss vector
    fast = NumpyScorer(model)
    hit = (torch.rand(12, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    for h, p in ((hit, data.p[0].numpy()), (torch.zeros(12), None)):
        with torch.no_grad():
            want = model(data.u[:1], data.e[:1], data.p[:1], h[None], data.s[:1])[0].numpy()
        got = fast(data.u[0].numpy(), data.e[0].numpy(), p, h.numpy(), data.s[0].numpy())
        assert np.abs(got - want).max() < 1e-5
