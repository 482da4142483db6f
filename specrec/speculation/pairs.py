"""FM pair representations for many users in batches, each batch retried on failure, all or nothing.

A user's pairs are computed in one batch (one M-FALCON pass: every candidate attends to the user's
history and itself), so a user's row is never split across batches. A batch that fails is retried
`retries` times; if it still fails, PrecomputeError is raised and the caller writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

PairFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PrecomputeError(RuntimeError):
    """An FM batch kept failing after its retries; nothing of the precompute was written."""


@dataclass
class PairResult:
    """Per user: pair vectors (n, D) and scores (n,), in the order of the user's items."""

    vectors: list[np.ndarray]
    scores: list[np.ndarray]
    cpu_s: float  # process CPU seconds of the FM work (including failed attempts)
    retries: int  # batches that needed a retry


def _left_pad(
    histories: list[tuple[np.ndarray, np.ndarray]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded item and timestamp tensors of the newest max_len events of each history."""
    t = max(1, max(min(len(h[0]), max_len) for h in histories))
    items = torch.zeros(len(histories), t, dtype=torch.long)
    ts = torch.zeros(len(histories), t, dtype=torch.long)
    for b, (it, sec) in enumerate(histories):
        it, sec = it[-max_len:], sec[-max_len:]
        if len(it):
            items[b, t - len(it) :] = torch.from_numpy(np.asarray(it, np.int64))
            ts[b, t - len(it) :] = torch.from_numpy(np.asarray(sec, np.int64))
    return items, ts


def _right_pad(cands: list[np.ndarray]) -> torch.Tensor:
    """(B, C) candidates padded with item 0 (a padding candidate sees only itself and the history)."""
    return torch.from_numpy(right_pad([np.asarray(x, np.int64) for x in cands], 0, min_len=1))


def right_pad(arrays: list[np.ndarray], fill: float, min_len: int = 0) -> np.ndarray:
    """Stack arrays whose first axis differs, right-padding each with `fill` to the longest."""
    n = max(min_len, max(len(a) for a in arrays))
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for b, a in enumerate(arrays):
        out[b, : len(a)] = a
    return out


@torch.no_grad()
def pair_batches(
    compute: PairFn,
    histories: list[tuple[np.ndarray, np.ndarray]],
    candidates: list[np.ndarray],
    max_len: int,
    batch_users: int,
    retries: int,
) -> PairResult:
    """Pair vectors and scores of each user's candidates, `batch_users` users per FM call."""
    order = np.argsort([len(c) for c in candidates], kind="stable")  # similar lengths pad less
    vectors: list[np.ndarray | None] = [None] * len(candidates)
    scores: list[np.ndarray | None] = [None] * len(candidates)
    cpu0, retried = time.process_time(), 0
    for lo in range(0, len(order), batch_users):
        rows = order[lo : lo + batch_users]
        items, ts = _left_pad([histories[r] for r in rows], max_len)
        cand = _right_pad([candidates[r] for r in rows])
        for attempt in range(retries + 1):
            try:
                vec, score = compute(items, ts, cand)  # (B, C, D), (B, C)
                break
            except Exception as exc:  # noqa: BLE001 - any FM failure: retry this batch, then give up
                if attempt == retries:
                    raise PrecomputeError(
                        f"FM pair representation failed for the batch of users at positions "
                        f"{rows.tolist()[:10]} after {retries} retries: {exc}. Nothing was written."
                    ) from exc
                retried += 1
                log.warning(
                    "FM batch %d failed (%s); retrying (%d/%d)", lo // batch_users, exc, attempt + 1, retries
                )
        for b, r in enumerate(rows):
            n = len(candidates[r])
            vectors[r] = vec[b, :n].numpy().astype(np.float32)
            scores[r] = score[b, :n].numpy().astype(np.float32)
    return PairResult(vectors, scores, time.process_time() - cpu0, retried)  # type: ignore[arg-type]
