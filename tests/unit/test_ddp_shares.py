"""DDP's arithmetic without processes: rank slices cover a batch, and the ranks' loss shares and their
gradients add up to the one-process loss and gradient (the reason N ranks follow one process's curve)."""

import numpy as np
import pytest
import torch

from models.ddp import Shard
from models.hstu import HSTU, HSTUConfig
from models.sequences import training_batches
from models.train import TrainConfig, _batch_loss
from tests.unit.test_models_train import N_ITEMS, cluster_walks


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_slices_cover_every_row_once_in_order(world: int) -> None:
    for n in range(12):
        parts = [Shard(r, world).rows(n) for r in range(world)]
        rows = [i for p in parts for i in range(n)[p]]
        assert rows == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_shard_rejects_a_rank_outside_the_group() -> None:
    with pytest.raises(ValueError, match=r"Shard\.rank=2 is invalid: must be in \[0, world_size=2\)"):
        Shard(2, 2)


def _loss_and_grads(
    model: HSTU, batch, cfg: TrainConfig, part: slice | None
) -> tuple[float, dict[str, torch.Tensor]]:
    """The (share of the) batch loss with a freshly seeded generator, and the gradients it gives."""
    model.zero_grad(set_to_none=True)
    loss = _batch_loss(model, batch, cfg, torch.Generator().manual_seed(7), part)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize(
    ("loss", "pair_weight", "world", "batch_size"),
    [
        ("sampled_softmax", 0.1, 2, 16),
        ("full_ce", 0.1, 3, 16),
        ("full_ce", 0.0, 2, 15),
        ("sampled_softmax", 0.1, 3, 2),  # one rank has no rows
    ],
)
def test_rank_shares_add_up_to_the_one_process_loss_and_gradient(
    loss: str, pair_weight: float, world: int, batch_size: int
) -> None:
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(n_items=N_ITEMS, max_len=8, dim=16, n_layers=2, dropout=0.0))
    cfg = TrainConfig(
        loss=loss, pair_loss_weight=pair_weight, n_uniform_negatives=8, n_inbatch_negatives=6, progress=False
    )
    data = cluster_walks(40, seed=3)
    batch = next(training_batches(data, batch_size, 8, np.random.default_rng(0), random_windows=True))
    whole, whole_grads = _loss_and_grads(model, batch, cfg, None)
    total, summed = 0.0, {n: torch.zeros_like(g) for n, g in whole_grads.items()}
    for rank in range(world):
        share, grads = _loss_and_grads(model, batch, cfg, Shard(rank, world).rows(len(batch.items)))
        total += share
        for n, g in grads.items():
            summed[n] += g
    assert total == pytest.approx(whole, rel=1e-5)
    for n, g in whole_grads.items():
        torch.testing.assert_close(summed[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_torchrun_environment_is_read_or_refused_in_one_line() -> None:
    from specrec.errors import SpecrecError
    from specrec.fm.distributed import torchrun_world

    assert torchrun_world({}) is None
    assert torchrun_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2)
    with pytest.raises(SpecrecError, match="RANK set but WORLD_SIZE, LOCAL_RANK not"):
        torchrun_world({"RANK": "0"})
