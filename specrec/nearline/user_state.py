"""`user_state`: the bundle's FM user state for users with new events, encoded incrementally.

The FM is the bundle's own (base with its adapter merged in, code embeddings: specrec.nearline.bundle_fm),
the same model its item_repr rows come from.

Each bundle keeps a key/value cache per user (paths.kv_cache/<bundle_id>.pt). A returning user's new
events are appended with `HSTU.extend` at O(new x history) cost instead of a full re-encode; a user
without a cache, or whose history would pass the model's window (fm.max_len), is encoded in full over
the newest window. A bundle seen for the first time is written for every known user (complete);
afterwards only users whose event count grew are written (incremental).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mlflow import MlflowClient
from models.hstu import HSTU
from specrec.clock import EventLog, to_utc
from specrec.config import Config
from specrec.io import read_parquet
from specrec.nearline import bundles
from specrec.nearline.bundle_fm import bundle_fm
from specrec.nearline.materialize import history_file, write_batch
from specrec.nearline.store import offline_dir

if TYPE_CHECKING:
    from feast import FeatureStore

    from models.hstu import KVCache
    from models.train import RecModel

log = logging.getLogger(__name__)

VIEW = "user_state"
RECENT = 20  # recent_items kept per user, newest first


@dataclass
class UserCache:
    """A user's encoded prefix: how many events it covers and the model's cache (None for SASRec)."""

    n_events: int
    cache: KVCache | None
    state: torch.Tensor  # (D,)


def _load(path: Path) -> dict[int, UserCache]:
    """The bundle's caches, or none yet."""
    return torch.load(path, weights_only=False) if path.exists() else {}


def _save(caches: dict[int, UserCache], path: Path) -> None:
    """Write caches atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(caches, tmp)
    tmp.replace(path)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """(1, T) int64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).unsqueeze(0)


def _can_extend(model: RecModel, old: UserCache | None, n_items: int) -> bool:
    """Whether the user's new events fit after the cached ones inside the model's window."""
    if not isinstance(model, HSTU) or old is None or old.cache is None or n_items <= old.n_events:
        return False
    return old.cache.length + n_items - old.n_events <= model.config.max_len


@torch.no_grad()
def extend_user(model: RecModel, items: np.ndarray, ts: np.ndarray, old: UserCache) -> UserCache:
    """Append the events after old.n_events to the user's cache (O(new x history))."""
    new = len(items) - old.n_events
    cache = model.extend(old.cache, _tensor(items[-new:]), _tensor(ts[-new:]))  # type: ignore[arg-type, operator]
    return UserCache(len(items), cache, cache.last_hidden[0])


def _row(cache: KVCache, b: int) -> KVCache:
    """Row b of a left-padded batched cache as a batch of one, its padding cut off.

    Attention biases depend only on position differences, so dropping the leading padding columns
    leaves every later extend exact while giving the user the whole window to grow into.
    """
    from models.hstu import KVCache

    p = int((~cache.valid[b]).sum())  # leading padding columns of this row
    return KVCache(
        [k[b : b + 1, :, p:] for k in cache.keys],
        [v[b : b + 1, :, p:] for v in cache.values],
        cache.timestamps[b : b + 1, p:],
        cache.valid[b : b + 1, p:],
        cache.last_hidden[b : b + 1],
    )


@torch.no_grad()
def encode_users(
    model: RecModel, histories: list[tuple[np.ndarray, np.ndarray]], batch: int = 64
) -> list[UserCache]:
    """Full encodes of the newest window of each history, batched with left padding."""
    from models.sequences import Sequences, history_batch

    seqs = Sequences([h[0] for h in histories], [h[1] for h in histories])
    out: list[UserCache] = []
    for lo in range(0, len(seqs), batch):
        rows = np.arange(lo, min(lo + batch, len(seqs)))
        items, times = history_batch(seqs, rows, model.config.max_len)  # (B, T) left-padded
        if isinstance(model, HSTU):
            cache = model.encode(items, times)
            out += [
                UserCache(len(seqs.items[r]), _row(cache, b), cache.last_hidden[b])
                for b, r in enumerate(rows)
            ]
        else:
            state = model.user_state(items, times)
            out += [UserCache(len(seqs.items[r]), None, state[b]) for b, r in enumerate(rows)]
    return out


def _histories(known: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per user: item_idx, unix seconds and item_id arrays in event order."""
    ordered = known.sort_values(["user_id", "event_id"], kind="stable")
    seconds = ordered["timestamp"].astype("int64").to_numpy() // 1_000_000_000
    out = {}
    for user, rows in ordered.groupby("user_id", sort=False).indices.items():
        out[int(user)] = (
            ordered["item_idx"].to_numpy()[rows],
            seconds[rows],
            ordered["item_id"].to_numpy()[rows],
        )
    return out


def update_user_state(
    cfg: Config,
    as_of: object,
    bundle: bundles.Bundle,
    store: FeatureStore,
    client: MlflowClient | None = None,
) -> dict[str, Any]:
    """Encode users with new events under `bundle` (its adapted FM) and write their rows at as_of."""
    when, start = to_utc(as_of), time.perf_counter()
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    histories = _histories(EventLog(events).known_at(when))
    cache_path = cfg.path(cfg.paths.kv_cache) / f"{bundle.bundle_id}.pt"
    caches = _load(cache_path)
    mode = "incremental" if caches else "complete"
    todo = [u for u, (items, _, _) in histories.items() if u not in caches or caches[u].n_events < len(items)]
    model = bundle_fm(cfg, client or MlflowClient(), bundle).model if todo else None
    extend = [u for u in todo if _can_extend(model, caches.get(u), len(histories[u][0]))]  # type: ignore[arg-type]
    full = [u for u in todo if u not in set(extend)]
    for user in extend:
        caches[user] = extend_user(model, histories[user][0], histories[user][1], caches[user])  # type: ignore[arg-type]
    if full:
        encoded = encode_users(model, [histories[u][:2] for u in full])  # type: ignore[arg-type]
        caches.update(dict(zip(full, encoded, strict=True)))
    rows = [
        {
            "user_id": u,
            "bundle_id": bundle.bundle_id,
            "recent_items": histories[u][2][::-1][:RECENT].tolist(),
            "state": caches[u].state.numpy().astype(np.float32),
            "n_events": len(histories[u][0]),
            "last_event_ts": pd.Timestamp(int(histories[u][1][-1]), unit="s", tz="UTC"),
            "event_timestamp": when,
        }
        for u in todo
    ]
    extended = len(extend)
    if rows:
        frame = pd.DataFrame(rows)
        folder = offline_dir(store, VIEW) / f"bundle={bundle.bundle_id}"
        write_batch(store, frame, folder / history_file(when), cfg.feast.write_batch_rows, VIEW)
        _save(caches, cache_path)  # after the write: a crash before it re-encodes those users next time
    seconds = time.perf_counter() - start
    log.info(
        "user_state %s at %s: %d users (%s, %d extended incrementally) in %.1fs",
        bundle.bundle_id,
        when.date(),
        len(rows),
        mode,
        extended,
        seconds,
    )
    return {
        "rows_written": len(rows),
        "users_extended": extended,
        "seconds": seconds,
        "rows_per_s": len(rows) / max(seconds, 1e-9),
        "mode": mode,
    }
