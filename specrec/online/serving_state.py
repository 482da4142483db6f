"""What the scorer serves from: one bundle's item index, user-state snapshot, item stats and scorer model.

A `ServingState` is built completely from one bundle and then swapped in with a single reference
assignment, so a request sees either the old bundle or the new one, never a mix. Item embeddings come
from the Feast online store (`item_repr` rows of exactly this bundle); items whose row is missing are
simply not in the index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import pandas as pd

from models.scorer import NumpyScorer, ThinScorer
from specrec.nearline import bundles

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

STATS = ["item_stats:count_1c", "item_stats:count_7c", "item_stats:trend", "item_stats:mean_rating"]


@dataclass
class ServingState:
    """An immutable snapshot of everything one bundle serves from."""

    bundle: bundles.Bundle
    item_ids: np.ndarray  # (N,) item_id of each index row
    embeddings: np.ndarray  # (N, D) float32
    index: Any  # faiss.IndexFlatIP over embeddings
    row_of: dict[int, int]  # item_id -> index row
    stats: np.ndarray  # (N, 5) scorer stats features
    popular: np.ndarray  # (P,) item_ids by recent popularity (cold-start answer)
    user_snapshot: dict[int, np.ndarray] = field(default_factory=dict)  # user_id -> retrieval query
    scorer: ThinScorer | None = None
    fast: NumpyScorer | None = field(init=False, default=None)  # the scorer's request-path copy

    def __post_init__(self) -> None:
        self.fast = None if self.scorer is None else NumpyScorer(self.scorer)

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return int(self.embeddings.shape[1])


def _online(
    store: FeatureStore, features: list[str], rows: list[dict[str, Any]], chunk: int = 5000
) -> dict[str, list[Any]]:
    """get_online_features over many entity rows, in chunks."""
    out: dict[str, list[Any]] = {}
    for lo in range(0, len(rows), chunk):
        part = store.get_online_features(features=features, entity_rows=rows[lo : lo + chunk]).to_dict()
        for key, values in part.items():
            out.setdefault(key, []).extend(values)
    return out


def load_items(store: FeatureStore, catalogue: pd.DataFrame, bundle_id: str) -> tuple[np.ndarray, np.ndarray]:
    """item_ids and (N, D) embeddings of the bundle's materialized items."""
    rows = [{"item_id": int(i), "bundle_id": bundle_id} for i in catalogue["item_id"]]
    got = _online(store, ["item_repr:embedding"], rows)
    keep = [k for k, e in enumerate(got["embedding"]) if e is not None]
    ids = np.asarray([got["item_id"][k] for k in keep], dtype=np.int64)
    emb = np.asarray([got["embedding"][k] for k in keep], dtype=np.float32).reshape(len(keep), -1)
    return ids, emb


def load_stats(store: FeatureStore, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scorer stats features per index row, and item_ids by count over the last 7 cycles (popularity)."""
    from models.scorer import stats_features

    got = _online(store, STATS, [{"item_id": int(i)} for i in item_ids])
    col = {
        k: np.asarray([np.nan if v is None else v for v in got[k.split(":")[1]]], dtype=np.float64)
        for k in STATS
    }
    c1, c7 = np.nan_to_num(col[STATS[0]]), np.nan_to_num(col[STATS[1]])
    feats = stats_features(c1, c7, np.nan_to_num(col[STATS[2]]), col[STATS[3]])
    popular = item_ids[np.argsort(-(c7 + 1e-3 * c1), kind="stable")]
    return feats, popular


def load_user_snapshot(store: FeatureStore, user_ids: list[int], bundle_id: str) -> dict[int, np.ndarray]:
    """user_id -> FM user state of the bundle (the retrieval query while the fresh read is in flight)."""
    got = _online(store, ["user_state:state"], [{"user_id": u, "bundle_id": bundle_id} for u in user_ids])
    return {
        int(u): np.asarray(s, dtype=np.float32)
        for u, s in zip(got["user_id"], got["state"], strict=True)
        if s is not None
    }


def build_state(
    store: FeatureStore,
    bundle: bundles.Bundle,
    catalogue: pd.DataFrame,
    user_ids: list[int],
    scorer: ThinScorer | None,
) -> ServingState:
    """Read everything of one bundle and index it; nothing is shared with the previous state."""
    ids, emb = load_items(store, catalogue, bundle.bundle_id)
    if len(ids) == 0:
        from specrec.errors import SpecrecError

        raise SpecrecError(
            f"bundle {bundle.bundle_id} has no item_repr rows in the online store; "
            "materialize it first (materialize_item_embeddings)."
        )
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    stats, popular = load_stats(store, ids)
    snapshot = load_user_snapshot(store, user_ids, bundle.bundle_id)
    log.info("serving state for bundle %s: %d items, %d users", bundle.bundle_id, len(ids), len(snapshot))
    return ServingState(
        bundle, ids, emb, index, {int(i): k for k, i in enumerate(ids)}, stats, popular, snapshot, scorer
    )


def score(
    state: ServingState, user_vec: np.ndarray, rows: np.ndarray, pair: dict[int, np.ndarray]
) -> np.ndarray:
    """Scores of index rows for a user: the thin scorer, or the FM dot product when there is none."""
    e = state.embeddings[rows]  # (C, D)
    if state.fast is None:
        return e @ user_vec
    hit = np.zeros(len(rows), dtype=np.float32)
    p = None  # no precomputed pair at all: every candidate takes the scorer's miss vector
    if pair:
        ids = state.item_ids[rows]
        found = np.flatnonzero(np.isin(ids, np.fromiter(pair, dtype=np.int64)))
        if len(found):
            p = np.zeros_like(e)  # (C, D): misses stay zero, the scorer swaps in its miss vector
            for k in found:
                p[k], hit[k] = pair[int(ids[k])], 1.0
    return state.fast(user_vec, e, p, hit, state.stats[rows])
