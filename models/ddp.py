"""Data-parallel training over torch.distributed: which rows of a batch a rank owns, and the few
collectives the training loop needs besides DistributedDataParallel's gradient all-reduce.

Every rank draws the same global batch (same seed, same numpy and torch generators) and trains on its
own contiguous slice of its rows. A rank's loss is its *share* of the global batch's loss (the sum of
its terms over the global count), scaled by world_size so that the gradient average DDP takes equals
the gradient of the one-process loss on the whole batch; negatives (in-batch, pair) are drawn from the
whole batch with the shared generator, as in one process. So with dropout off the loss curve and the
weights follow one process's up to float rounding (tests/integration/test_ddp_training.py).

Why not DistributedSampler: `training_batches` buckets users by length inside random chunks; slicing
each bucketed global batch keeps exactly the batches one process would see, a per-rank sampler would not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from models.sequences import Batch


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel group: its rank among world_size ranks."""

    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            rule = f"must be in [0, world_size={self.world_size})"
            raise ValueError(f"Shard.rank={self.rank} is invalid: {rule}")

    @classmethod
    def current(cls) -> Shard:
        """The shard of the initialised default process group."""
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous slice of n rows; the first n % world_size ranks get one row more."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + int(self.rank < extra))

    def sum(self, value: float) -> float:
        """The sum of `value` over all ranks (float64)."""
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag on every rank: wall-clock decisions (time budget) differ between processes."""
        t = torch.tensor([int(flag)], dtype=torch.int64)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The (n,) concatenation of every rank's `rows(n)` slice, from this rank's slice `local`."""
        size = self.rows(n).stop - self.rows(n).start
        if local.shape != (size,):
            raise ValueError(f"gather_rows: this rank owns {size} of {n} rows but got {tuple(local.shape)}")
        width = -(-n // self.world_size)  # every rank sends the same length: ceil(n / world_size)
        buf = torch.zeros(width, dtype=local.dtype)
        buf[:size] = local
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf)
        sizes = [Shard(r, self.world_size).rows(n) for r in range(self.world_size)]
        return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes, strict=True)])


class ShardLoss(nn.Module):
    """One forward from batch to this rank's loss share, so DistributedDataParallel sees every parameter
    use (the loss calls the model's forward, item table and pair head)."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Batch, slice], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Batch, part: slice) -> torch.Tensor:
        """This rank's share of the batch's loss (a 0-d tensor)."""
        return self.loss(self.model, batch, part)


def wrap(
    model: nn.Module, loss: Callable[[nn.Module, Batch, slice], torch.Tensor], find_unused: bool
) -> nn.Module:
    """DistributedDataParallel over ShardLoss (CPU, gloo); rank 0's weights are broadcast to all ranks.

    `find_unused`: some parameters get no gradient in a step (e.g. HSTU's candidate marker when the pair
    loss is off); DDP then walks the autograd graph every step to find them.
    """
    return nn.parallel.DistributedDataParallel(ShardLoss(model, loss), find_unused_parameters=find_unused)
