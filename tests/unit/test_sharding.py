"""How sharded writes split and merge work (specrec.sharding) and the `dask:` config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specrec.config import DaskConfig
from specrec.errors import ConfigError
from specrec.sharding import merge_pairs, pair_shards, ranges, task_runner
from specrec.speculation.pairs import pair_batches


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17, 100, 1001])
@pytest.mark.parametrize("shards", [1, 2, 3, 8])
@pytest.mark.parametrize("step", [1, 4, 16])
def test_ranges_cover_every_row_once_in_whole_steps(n: int, shards: int, step: int) -> None:
    parts = ranges(n, shards, step)
    assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
    assert len(parts) <= shards and all(lo < hi for lo, hi in parts)
    assert all(lo % step == 0 for lo, _ in parts)  # cut only between whole steps (batches)
    if n >= shards * step:
        assert len(parts) == shards
        sizes = [-(-(hi - lo) // step) for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1


def _padding_sensitive(
    items: torch.Tensor, ts: torch.Tensor, cand: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair function whose output depends on how users were batched (the padded history length), so a
    shard that batched users differently from the in-process run would give other values."""
    width = float(items.shape[1])
    vec = torch.stack([cand.float() * width, items.sum(1, keepdim=True).float().expand_as(cand)], -1)
    return vec, cand.float() + width  # (B, C, 2), (B, C)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_shards_run_the_in_process_batches_and_merge_back_in_order(shards: int) -> None:
    rng = np.random.default_rng(0)
    n, batch = 23, 3
    histories = [(rng.integers(1, 50, k), np.arange(k)) for k in rng.integers(0, 12, n)]
    candidates = [rng.integers(1, 50, k) for k in rng.integers(1, 6, n)]
    whole = pair_batches(_padding_sensitive, histories, candidates, 8, batch, 0)
    parts = pair_shards(histories, candidates, batch, shards)
    assert sorted(p for s in parts for p in s.positions) == list(range(n))
    results = [pair_batches(_padding_sensitive, s.histories, s.candidates, 8, batch, 0) for s in parts]
    merged = merge_pairs(n, parts, results)
    for got, want in zip(merged.vectors + merged.scores, whole.vectors + whole.scores, strict=True):
        assert np.array_equal(got, want)


def test_merge_refuses_missing_users() -> None:
    parts = pair_shards([(np.arange(2), np.arange(2))] * 2, [np.arange(1, 3)] * 2, 1, 2)
    result = pair_batches(_padding_sensitive, parts[0].histories, parts[0].candidates, 8, 1, 0)
    with pytest.raises(RuntimeError, match="no pair vectors"):
        merge_pairs(2, parts[:1], [result])


def test_dask_config_is_validated_and_null_means_in_process() -> None:
    assert task_runner(DaskConfig()) is None
    local = task_runner(DaskConfig(address="local", n_workers=3, processes=False))
    assert local is not None and local.cluster_kwargs["n_workers"] == 3
    assert task_runner(DaskConfig(address="tcp://10.0.0.5:8786")).address == "tcp://10.0.0.5:8786"  # type: ignore[union-attr]
    for bad in ({"address": "scheduler:8786"}, {"shards": 0}, {"n_workers": 0}, {"threads_per_worker": 0}):
        with pytest.raises(ConfigError) as err:
            DaskConfig(**bad)  # type: ignore[arg-type]
        assert f"dask.{next(iter(bad))}" in str(err.value)
