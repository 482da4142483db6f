"""Sharded nearline writes on a Dask cluster: the task runner of `dask:` and how work is split and merged.

The platform adds no distribution layer of its own: a shard is a Prefect task submitted on prefect-dask's
`DaskTaskRunner`, and Dask places it on a worker. What this module decides is the split, so that the rows
written never depend on the number of shards or on where they ran:

- item materialization: the items to write, in their fixed order, cut into contiguous ranges; every row
  is a pure function of (item, bundle), so any cut gives the same rows;
- speculative precompute: the chosen users in the order the FM batches them (by candidate count), cut
  only between whole FM batches, so every shard runs exactly the batches the in-process run would, and
  the pair vectors come back into the in-process order before the single, all-or-nothing write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from specrec.config import DaskConfig

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

    from specrec.speculation.pairs import PairResult


def task_runner(dask: DaskConfig) -> DaskTaskRunner | None:
    """The DaskTaskRunner of `dask:`; None when `address` is null (the flows run in-process, as before)."""
    if dask.address is None:
        return None
    from prefect_dask import DaskTaskRunner

    if dask.address == "local":
        kwargs = {
            "n_workers": dask.n_workers,
            "threads_per_worker": dask.threads_per_worker,
            "processes": dask.processes,
            "dashboard_address": None,  # no fixed port to collide with (and no bokeh needed)
        }
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)
    return DaskTaskRunner(address=dask.address)


def ranges(n: int, shards: int, step: int = 1) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges covering 0..n in at most `shards` non-empty parts of near-equal size,
    cut only at multiples of `step` (whole batches)."""
    units = -(-n // step)  # whole steps, the last one possibly short
    cuts = np.linspace(0, units, min(shards, units) + 1).round().astype(int) * step
    return [(int(lo), int(min(hi, n))) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if lo < hi]


@dataclass(frozen=True)
class PairShard:
    """One precompute shard: positions of its users in the window's user list, their histories and items."""

    positions: list[int]
    histories: list[tuple[np.ndarray, np.ndarray]]  # per user: (item_idx, timestamps), newest last
    candidates: list[np.ndarray]  # per user: item_idx whose pair representation is computed


def pair_shards(
    histories: list[tuple[np.ndarray, np.ndarray]],
    candidates: list[np.ndarray],
    batch_users: int,
    shards: int,
) -> list[PairShard]:
    """Split a window's users into shards of whole FM batches, in the order `pair_batches` batches them."""
    order = np.argsort([len(c) for c in candidates], kind="stable")  # as specrec.speculation.pairs does
    out = []
    for lo, hi in ranges(len(order), shards, batch_users):
        pos = [int(p) for p in order[lo:hi]]
        out.append(PairShard(pos, [histories[p] for p in pos], [candidates[p] for p in pos]))
    return out


def merge_pairs(n: int, shards: list[PairShard], results: list[PairResult]) -> PairResult:
    """The shards' pair vectors back in the window's user order; CPU seconds and retries summed."""
    from specrec.speculation.pairs import PairResult

    vectors: list[np.ndarray | None] = [None] * n
    scores: list[np.ndarray | None] = [None] * n
    for shard, result in zip(shards, results, strict=True):
        for k, p in enumerate(shard.positions):
            vectors[p], scores[p] = result.vectors[k], result.scores[k]
    missing = [i for i, v in enumerate(vectors) if v is None]
    if missing:
        raise RuntimeError(f"precompute shards returned no pair vectors for the users at {missing[:10]}")
    cpu = sum(r.cpu_s for r in results)
    return PairResult(vectors, scores, cpu, sum(r.retries for r in results))  # type: ignore[arg-type]
