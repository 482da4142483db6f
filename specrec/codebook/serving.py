"""What a serving bundle takes from its codebook: semantic IDs for item_repr and code embeddings for the FM.

A bundle names a `specrec-codebook` version. Materializing the bundle writes each item's semantic ID
(L codes + collision index) into item_repr's `semantic_id`, and the FM's item table uses the codebook's
code embeddings for items the FM was not trained on (specrec.codebook.fm_codes), so a new item gets a
meaningful embedding in the ANN index and in user histories. Bundles whose codebook part is not a
registered version (none yet, or a placeholder) are served without codes, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlflow import MlflowClient
from specrec.clock import to_utc
from specrec.codebook import versions
from specrec.codebook.build import FMInfo
from specrec.codebook.fm_codes import with_code_embeddings
from specrec.config import Config
from specrec.io import read_parquet

if TYPE_CHECKING:
    from models.train import RecModel

log = logging.getLogger(__name__)


def fm_cutoff(client: MlflowClient, fm_version: str) -> pd.Timestamp | None:
    """The time the FM version was trained up to: its run's `as_of` tag."""
    from specrec.fm.train import REGISTERED_MODEL as REGISTERED_FM

    mv = client.get_model_version(REGISTERED_FM, fm_version)
    as_of = client.get_run(mv.run_id).data.tags.get("as_of") if mv.run_id else None
    return to_utc(as_of) if as_of else None


def fm_info(client: MlflowClient, fm_version: str, fallback_cutoff: object) -> FMInfo:
    """The registered FM version with its training cutoff (fallback: clock.start)."""
    from specrec.nearline.materialize import load_fm

    cutoff = fm_cutoff(client, fm_version) or to_utc(fallback_cutoff)
    return FMInfo(fm_version, cutoff, load_fm(fm_version))


@dataclass(frozen=True)
class BundleCodes:
    """The semantic IDs of a bundle's codebook, by item_idx, and the codebook's size."""

    version: str
    sids: np.ndarray  # (n_items+1, L+1), -1 rows for items without an ID
    levels: int
    codebook_size: int

    def of(self, item_idx: np.ndarray) -> list[np.ndarray]:
        """Semantic IDs of items (empty arrays for items without one)."""
        rows = self.sids[item_idx]
        return [r if r[0] >= 0 else np.zeros(0, dtype=np.int64) for r in rows]


def bundle_codes(client: MlflowClient, codebook_version: str, n_items: int) -> BundleCodes | None:
    """The codebook of a bundle, or None when its codebook part is not a registered version."""
    if not codebook_version:
        return None
    if not versions.exists(client, codebook_version):
        log.warning(
            "bundle names codebook %r, which is not a version of %s: semantic_id stays empty",
            codebook_version,
            versions.REGISTERED_MODEL,
        )
        return None
    codebook = versions.load_version(client, codebook_version)
    sids = versions.codes_by_item_idx(codebook, n_items)
    return BundleCodes(codebook_version, sids, codebook.levels, codebook.codebook_size)


def attach(
    client: MlflowClient,
    model: RecModel,
    fm_version: str,
    codes: BundleCodes,
    items: pd.DataFrame,
    also_trained: Sequence[int] = (),
) -> RecModel:
    """The FM with code embeddings: items first seen at or after its cutoff embed by their codes, except
    `also_trained` (item_idx whose rows an adapter learned), which keep their embedding like trained items."""
    cutoff = fm_cutoff(client, fm_version)
    n_rows = model.config.n_items + 1
    trained = np.zeros(n_rows, dtype=bool)
    known = items[items["first_seen"].notna()]
    if cutoff is not None:
        known = known[known["first_seen"] < cutoff]
    idx = np.concatenate([known["item_idx"].to_numpy(np.int64), np.asarray(also_trained, np.int64)])
    trained[idx[idx < n_rows]] = True
    return with_code_embeddings(model, codes.sids[:, : codes.levels], trained, codes.codebook_size)


def bundle_model(
    cfg: Config,
    client: MlflowClient,
    model: RecModel,
    fm_version: str,
    codebook_version: str,
    also_trained: Sequence[int] = (),
) -> tuple[RecModel, BundleCodes | None]:
    """The bundle's FM (with code embeddings when it has a codebook) and its semantic IDs.

    `also_trained`: item rows an adapter merged into `model` learned (they keep their embedding). The
    whole bundle FM, adapter included, is specrec.nearline.bundle_fm.bundle_fm.
    """
    codes = bundle_codes(client, codebook_version, model.config.n_items)
    if codes is None:
        return model, None
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    return attach(client, model, fm_version, codes, items, also_trained), codes
