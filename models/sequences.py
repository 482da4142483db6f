"""User sequences, leave-one-out splits and left-padded batches for next-item training.

Data contract: items are indexed 1..n_items, 0 is padding; each user's history is a time-ordered int64
array of items plus an int64 array of unix-second timestamps of the same length. Batches are
*left*-padded, so the most recent event of every row sits in the last column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

# Batches are sorted by length inside chunks of this many batches, so a batch pads to a similar length
# while the order of batches stays random.
BUCKET_CHUNK_BATCHES = 50


@dataclass(frozen=True)
class Sequences:
    """Per-user time-ordered item indices and unix-second timestamps."""

    items: list[np.ndarray]
    timestamps: list[np.ndarray]

    def __post_init__(self) -> None:
        if len(self.items) != len(self.timestamps):
            raise ValueError(
                f"Sequences: items has {len(self.items)} users but timestamps has {len(self.timestamps)}"
            )
        for u, (it, ts) in enumerate(zip(self.items, self.timestamps, strict=True)):
            if len(it) != len(ts):
                raise ValueError(f"Sequences: user {u} has {len(it)} items but {len(ts)} timestamps")

    def __len__(self) -> int:
        """Number of users."""
        return len(self.items)

    def lengths(self) -> np.ndarray:
        """Events per user, shape (U,)."""
        return np.fromiter((len(s) for s in self.items), dtype=np.int64, count=len(self.items))

    def n_items_max(self) -> int:
        """Largest item index present (0 if empty)."""
        return max((int(s.max()) for s in self.items if len(s)), default=0)


@dataclass(frozen=True)
class EvalSet:
    """One held-out target per user, with the history of everything before it."""

    histories: Sequences
    targets: np.ndarray  # (U,) int64

    def __post_init__(self) -> None:
        if len(self.histories) != len(self.targets):
            raise ValueError(f"EvalSet: {len(self.histories)} histories but {len(self.targets)} targets")

    def __len__(self) -> int:
        """Number of evaluated users."""
        return len(self.targets)


def leave_one_out(seqs: Sequences) -> tuple[Sequences, EvalSet, EvalSet]:
    """Split into (train, valid, test): test = last item, valid = second-last, train = the rest.

    Users with fewer than 3 events cannot give all three parts and are left out.
    """
    keep = [u for u in range(len(seqs)) if len(seqs.items[u]) >= 3]
    it = [seqs.items[u] for u in keep]
    ts = [seqs.timestamps[u] for u in keep]
    train = Sequences([s[:-2] for s in it], [t[:-2] for t in ts])
    valid = EvalSet(train, np.array([s[-2] for s in it], dtype=np.int64))
    test = EvalSet(
        Sequences([s[:-1] for s in it], [t[:-1] for t in ts]), np.array([s[-1] for s in it], dtype=np.int64)
    )
    return train, valid, test


def pad_left(arrays: list[np.ndarray], length: int) -> np.ndarray:
    """Stack the last `length` entries of each array into a zero left-padded (B, length) int64 array."""
    out = np.zeros((len(arrays), length), dtype=np.int64)
    for row, a in enumerate(arrays):
        tail = a[-length:] if length > 0 else a[:0]
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


@dataclass(frozen=True)
class Batch:
    """A left-padded training batch: inputs and the next item at every position."""

    items: torch.Tensor  # (B, T) input items, 0 = padding
    timestamps: torch.Tensor  # (B, T) unix seconds of the input items
    targets: torch.Tensor  # (B, T) next item after each position, 0 = no target

    def n_targets(self) -> int:
        """Number of supervised positions."""
        return int((self.targets > 0).sum())


def make_training_batch(
    seqs: Sequences, users: np.ndarray, max_len: int, rng: np.random.Generator | None = None
) -> Batch:
    """Window max_len+1 events of each user into (input, next-item target) pairs: the last ones, or,
    with `rng`, a window ending at a random position (long histories then train on all their events
    over the epochs instead of only their newest max_len)."""
    ends = [len(seqs.items[u]) for u in users]
    if rng is not None:
        ends = [n if n <= max_len + 1 else int(rng.integers(max_len + 1, n + 1)) for n in ends]
    windows = [seqs.items[u][max(0, e - max_len - 1) : e] for u, e in zip(users, ends, strict=True)]
    times = [seqs.timestamps[u][max(0, e - max_len - 1) : e] for u, e in zip(users, ends, strict=True)]
    t = max(len(w) for w in windows) - 1
    return Batch(
        items=torch.from_numpy(pad_left([w[:-1] for w in windows], t)),
        timestamps=torch.from_numpy(pad_left([s[:-1] for s in times], t)),
        targets=torch.from_numpy(pad_left([w[1:] for w in windows], t)),
    )


def training_batches(
    seqs: Sequences, batch_size: int, max_len: int, rng: np.random.Generator, random_windows: bool = False
) -> Iterator[Batch]:
    """Yield shuffled next-item batches, bucketed by length inside random chunks to limit padding;
    `random_windows`: each long history is cut at a random end (see make_training_batch)."""
    lengths = seqs.lengths()
    for group in length_grouped(lengths, np.flatnonzero(lengths >= 2), batch_size, rng):
        yield make_training_batch(seqs, group, max_len, rng if random_windows else None)


def length_grouped(
    lengths: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Shuffled batches of `indices` with similar `lengths`: a random permutation is cut into chunks of
    BUCKET_CHUNK_BATCHES batches, each chunk sorted by length and split into batches, and the batches of a
    chunk yielded in random order, so a batch pads to a length near its members' own.

    `weights` (e.g. each member's supervised targets): batches are cut by weight instead of count, each
    holding about batch_size * mean weight (token-budget batching, as fairseq's --max-tokens), so a batch
    of short members holds more of them and every batch carries about as many targets as a random one."""
    order = rng.permutation(indices)
    chunk = batch_size * BUCKET_CHUNK_BATCHES
    budget = batch_size * float(np.mean(weights[indices])) if weights is not None and len(indices) else 0.0
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        if weights is None:
            groups = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        else:  # cut before the member that would take the batch past the budget (a batch has >= 1 member)
            filled = np.cumsum(weights[part])
            cuts = (
                np.flatnonzero(np.diff(np.floor(filled / budget)) > 0) + 1 if budget > 0 else np.empty(0, int)
            )
            groups = [g for g in np.split(part, cuts) if len(g)]
        for g in rng.permutation(len(groups)):
            yield groups[g]


def history_batch(histories: Sequences, users: np.ndarray, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, T) items and timestamps of the last max_len events of the given users."""
    t = max(1, min(max_len, max(len(histories.items[u]) for u in users)))
    items = pad_left([histories.items[u] for u in users], t)
    times = pad_left([histories.timestamps[u] for u in users], t)
    return torch.from_numpy(items), torch.from_numpy(times)


def count_targets(seqs: Sequences, max_len: int) -> int:
    """Number of next-item targets one training epoch sees (last max_len+1 events per user)."""
    return int(np.clip(seqs.lengths() - 1, 0, max_len).sum())
