"""The thin scorer: distillation stays finite when no chosen item was retrieved, and learns the teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


def test_fm_base_starts_at_the_fm_logit_on_hits_and_misses() -> None:
    """With base `fm` an untrained scorer whose MLP outputs 0 scores a hit with the FM pair score
    (scale * p.e) and a miss with the FM retrieval logit (scale * u.e); the NumPy copy agrees."""
    data = _batch(4, 6, 8, torch.zeros(4, dtype=torch.long))
    model = ThinScorer(ScorerConfig(dim=8, base="fm", scale=20.0)).eval()
    last = model.mlp[3]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    hit = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]).expand(4, 6)
    with torch.no_grad():
        got = model(data.u, data.e, data.p, hit, data.s)
    want = 20.0 * torch.where(hit > 0, (data.p * data.e).sum(-1), (data.u.unsqueeze(1) * data.e).sum(-1))
    assert torch.allclose(got, want, atol=1e-5)
    fast = NumpyScorer(model)
    np.testing.assert_allclose(
        fast(data.u[0].numpy(), data.e[0].numpy(), data.p[0].numpy(), hit[0].numpy(), data.s[0].numpy()),
        want[0].numpy(),
        atol=1e-4,
    )
    no_pairs = fast(data.u[0].numpy(), data.e[0].numpy(), None, np.zeros(6, np.float32), data.s[0].numpy())
    np.testing.assert_allclose(no_pairs, 20.0 * (data.u[0] * data.e[0]).sum(-1).numpy(), atol=1e-4)


def test_trained_fm_base_numpy_copy_matches() -> None:
    data = _batch(64, 12, 8, torch.randint(0, 12, (64,), generator=torch.Generator().manual_seed(4)))
    model = ThinScorer(ScorerConfig(dim=8, base="fm", scale=5.0))
    distill(model, data, epochs=3)
    fast = NumpyScorer(model)
    hit = (torch.rand(12, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    with torch.no_grad():
        want = model(data.u[:1], data.e[:1], data.p[:1], hit[None], data.s[:1])[0].numpy()
    got = fast(data.u[0].numpy(), data.e[0].numpy(), data.p[0].numpy(), hit.numpy(), data.s[0].numpy())
    assert np.abs(got - want).max() < 1e-4


def test_scorer_config_names_a_bad_base() -> None:
    with pytest.raises(ValueError, match="base='pair'"):
        ScorerConfig(dim=8, base="pair")
