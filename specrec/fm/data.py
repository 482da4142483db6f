"""Turn the split stage's leave-one-out table into the models' Sequences and EvalSets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.sequences import EvalSet, Sequences
from specrec.io import read_parquet


@dataclass(frozen=True)
class LooData:
    """Training prefixes, the validation targets and the test targets (history = prefix + valid item)."""

    train: Sequences
    valid: EvalSet
    test: EvalSet
    n_items: int

    @property
    def n_tokens(self) -> int:
        """Events in the training prefixes."""
        return int(self.train.lengths().sum())


def _arrays(column: pd.Series) -> list[np.ndarray]:
    """A list column as int64 arrays."""
    return [np.asarray(v, dtype=np.int64) for v in column]


def load_loo(split_dir: Path, prepared_dir: Path) -> LooData:
    """Read loo.parquet and the item count; build train/valid/test for the models."""
    loo = read_parquet(split_dir / "loo.parquet", "leave-one-out split")
    n_items = len(read_parquet(prepared_dir / "items.parquet", "prepared items"))
    items, times = _arrays(loo["train_items"]), _arrays(loo["train_timestamps"])
    train = Sequences(items, times)
    valid_item = loo["valid_item"].to_numpy(np.int64)
    valid_ts = loo["valid_timestamp"].to_numpy(np.int64)
    test_hist = Sequences(
        [np.append(i, v) for i, v in zip(items, valid_item, strict=True)],
        [np.append(t, v) for t, v in zip(times, valid_ts, strict=True)],
    )
    return LooData(
        train, EvalSet(train, valid_item), EvalSet(test_hist, loo["test_item"].to_numpy(np.int64)), n_items
    )
