"""A codebook generation: its inputs, training, semantic-ID table, health, and its folder on disk.

Inputs per item (models/codebook.py): the MiniLM content embedding when the item has text, and the FM's
item embedding when the FM was trained on the item (first seen before the FM's cutoff). Items with
neither cannot be coded yet (counted as `uncoded`); items with only the collaborative part are coded
from it alone (the no-text fallback, logged and counted).

The folder holds `model.safetensors` (the RQ-VAE, with its code permutation), `config.json` (the RQ-VAE
config and the FM it read: version and cutoff) and `semantic_ids.parquet`: item_id, item_idx,
first_seen, sid (L codes + collision index), source (content+collab | content | collab),
recon_error, assigned_as_of, reference (True for the items it was trained on).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models.codebook import RQVAE, RQVAEConfig, RQVAETrainConfig, align_codes, semantic_ids, train_rqvae
from specrec.codebook import health as hl
from specrec.codebook.text import CONTENT_DIM, check_unique_items, content_for
from specrec.config import Config
from specrec.errors import DataError

if TYPE_CHECKING:
    from models.train import RecModel

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TABLE_FILE = "semantic_ids.parquet"
SOURCES = ("content+collab", "content", "collab")


@dataclass(frozen=True)
class FMInfo:
    """The FM whose item embeddings are the collaborative input, and the time it was trained up to."""

    version: str  # specrec-fm registry version ('' when unknown)
    cutoff: pd.Timestamp  # items first seen before this have a trained embedding
    model: RecModel


@dataclass
class Inputs:
    """RQ-VAE inputs of items (rows aligned with `items`)."""

    items: pd.DataFrame  # item_id, item_idx, first_seen, source
    x: torch.Tensor  # (N, Dc + Df) float32
    mask: torch.Tensor  # (N, 2) bool: (has content, has collab)
    without_text: int  # coded from the collaborative embedding alone
    uncoded: pd.DataFrame  # items with neither part: no ID until an FM has trained on them


def collab_dim(fm: FMInfo | None) -> int:
    """Df: the FM's embedding size, 0 without an FM."""
    return 0 if fm is None else int(fm.model.config.dim)


def build_inputs(cfg: Config, items: pd.DataFrame, fm: FMInfo | None) -> Inputs:
    """Content + collaborative inputs of items; refuse duplicate ids; set aside items with neither part."""
    check_unique_items(items, "the item table")
    items = items.reset_index(drop=True)
    content = content_for(cfg, items)
    has_text = content.items["has_text"].to_numpy()
    df = collab_dim(fm)
    collab = np.zeros((len(items), df), dtype=np.float32)
    has_collab = np.zeros(len(items), dtype=bool)
    if fm is not None:
        has_collab = (items["first_seen"].notna() & (items["first_seen"] < fm.cutoff)).to_numpy()
        with torch.no_grad():
            table = F.normalize(fm.model.item_embeddings(), dim=-1)  # (n_items+1, Df), unit rows
        idx = torch.from_numpy(items["item_idx"].to_numpy(np.int64)[has_collab])
        collab[has_collab] = table[idx].numpy() * cfg.codebook.collab_weight
    keep = has_text | has_collab
    source = np.where(has_text & has_collab, SOURCES[0], np.where(has_text, SOURCES[1], SOURCES[2]))
    frame = items.loc[keep, ["item_id", "item_idx", "first_seen"]].reset_index(drop=True)
    frame["source"] = source[keep]
    x = np.concatenate([content.embeddings, collab], axis=1)[keep]  # (N, Dc + Df)
    mask = np.stack([has_text, has_collab], axis=1)[keep]  # (N, 2)
    without_text = int((keep & ~has_text).sum())
    uncoded = items.loc[~keep, ["item_id", "item_idx", "first_seen"]]
    if without_text:
        log.warning("%d items have no text: coded from their collaborative embedding alone", without_text)
    if len(uncoded):
        log.warning(
            "%d items have neither text nor a trained FM embedding and get no semantic ID yet (item_id %s)",
            len(uncoded),
            uncoded["item_id"].head(20).tolist(),
        )
    return Inputs(frame, torch.from_numpy(x), torch.from_numpy(mask), without_text, uncoded)


def arrival_order(items: pd.DataFrame) -> np.ndarray:
    """Row order by (first_seen, item_id): collision indices are handed out in arrival order."""
    key = items.assign(_fs=items["first_seen"].fillna(pd.Timestamp.max.tz_localize("UTC")))
    return key.sort_values(["_fs", "item_id"], kind="stable").index.to_numpy()


@dataclass
class Codebook:
    """A trained codebook: the RQ-VAE, what it read, and the semantic IDs it has handed out."""

    model: RQVAE
    meta: dict[str, Any]  # as_of, fm_version, fm_cutoff, collab_weight
    table: pd.DataFrame  # see the module docstring

    @property
    def levels(self) -> int:
        """L."""
        return self.model.config.levels

    @property
    def codebook_size(self) -> int:
        """K."""
        return self.model.config.codebook_size

    def sids(self) -> np.ndarray:
        """(N, L+1) semantic IDs of the table's rows."""
        return (
            np.stack(self.table["sid"].to_list()).astype(np.int64)
            if len(self.table)
            else _no_sids(self.levels)
        )

    def codes(self) -> np.ndarray:
        """(N, L) semantic codes (without the collision index)."""
        return self.sids()[:, : self.levels]

    def assign(self, inputs: Inputs, as_of: pd.Timestamp, reference: bool) -> pd.DataFrame:
        """Code new items with the frozen model; their IDs come after the ones already handed out."""
        codes = self.model.encode(inputs.x, inputs.mask).numpy()  # (N, L)
        errors = self.model.item_errors(inputs.x, inputs.mask).numpy()  # (N,)
        order = arrival_order(inputs.items)
        sids = np.empty((len(codes), self.levels + 1), dtype=np.int64)
        sids[order] = semantic_ids(codes[order], self.sids() if len(self.table) else None)
        rows = inputs.items.assign(
            sid=list(sids), recon_error=errors, assigned_as_of=as_of, reference=reference
        )
        self.table = pd.concat([self.table, rows], ignore_index=True) if len(self.table) else rows
        return rows

    def health(self, rows: pd.DataFrame | None = None) -> hl.Health:
        """Health of the given rows of the table (all by default)."""
        rows = self.table if rows is None else rows
        codes = np.stack(rows["sid"].to_list())[:, : self.levels] if len(rows) else _no_sids(self.levels - 1)
        return hl.health(codes, rows["recon_error"].to_numpy(), self.codebook_size)

    def save(self, folder: Path) -> Path:
        """Write the folder (weights, config, semantic IDs)."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        meta = {"rqvae": asdict(self.model.config), **self.meta}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        write_table(self.table, folder / TABLE_FILE)
        return folder


def _no_sids(levels: int) -> np.ndarray:
    """An empty (0, levels+1) id array."""
    return np.zeros((0, levels + 1), dtype=np.int64)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Write a semantic-ID table (sid as a list column)."""
    from specrec.io import write_parquet

    out = table.assign(sid=[np.asarray(s, dtype=np.int64) for s in table["sid"]])
    return write_parquet(out, path)


def read_table(path: Path) -> pd.DataFrame:
    """Read a semantic-ID table."""
    table = pd.read_parquet(path)
    table["sid"] = [np.asarray(s, dtype=np.int64) for s in table["sid"]]
    return table


def load(folder: Path, table: pd.DataFrame | None = None) -> Codebook:
    """Rebuild a codebook from its folder (optionally with a newer semantic-ID table)."""
    meta = json.loads((folder / CONFIG_FILE).read_text())
    model = RQVAE(RQVAEConfig(**meta.pop("rqvae")))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    return Codebook(model, meta, read_table(folder / TABLE_FILE) if table is None else table)


def rqvae_config(cfg: Config, fm: FMInfo | None) -> RQVAEConfig:
    """The RQ-VAE architecture from params.yaml's codebook section."""
    c = cfg.codebook
    return RQVAEConfig(
        content_dim=CONTENT_DIM,
        collab_dim=collab_dim(fm),
        latent_dim=c.latent_dim,
        hidden=c.hidden,
        levels=c.levels,
        codebook_size=c.codebook_size,
        commitment_weight=c.commitment_weight,
        kmeans_iters=c.kmeans_iters,
        dead_code_threshold=c.dead_code_threshold,
    )


@dataclass
class Trained:
    """A newly trained codebook and how it compares with its predecessor."""

    codebook: Codebook
    inputs: Inputs
    losses: list[float]
    stability: dict[str, float]  # prefix_changed_d{depth} (aligned) and raw_prefix_changed_d{depth}


def train_codebook(
    cfg: Config,
    items: pd.DataFrame,
    fm: FMInfo | None,
    as_of: pd.Timestamp,
    previous: Codebook | None = None,
    progress: bool = True,
) -> Trained:
    """Train on every item of `items`, align its code numbering with `previous`, hand out semantic IDs."""
    inputs = build_inputs(cfg, items, fm)
    if len(inputs.items) < cfg.codebook.codebook_size:
        raise DataError(
            f"only {len(inputs.items)} items can be coded, fewer than codebook.codebook_size "
            f"({cfg.codebook.codebook_size}); lower codebook.codebook_size or add items."
        )
    torch.manual_seed(cfg.codebook.seed)
    model = RQVAE(rqvae_config(cfg, fm))
    c = cfg.codebook
    tcfg = RQVAETrainConfig(c.epochs, c.batch_size, c.lr, c.modality_dropout, c.seed, progress)
    losses = train_rqvae(model, inputs.x, inputs.mask, tcfg)
    stability: dict[str, float] = {}
    if previous is not None:
        stability = remap(model, inputs, previous)
    meta = {
        "as_of": as_of.isoformat(),
        "fm_version": "" if fm is None else fm.version,
        "fm_cutoff": "" if fm is None else fm.cutoff.isoformat(),
        "collab_weight": c.collab_weight,
    }
    codebook = Codebook(model, meta, pd.DataFrame())
    codebook.assign(inputs, as_of, reference=True)
    return Trained(codebook, inputs, losses, stability)


def remap(model: RQVAE, inputs: Inputs, previous: Codebook) -> dict[str, float]:
    """Align the new model's code numbering with the previous codebook; return stability before/after.

    Stability is measured on the items both versions coded: the share whose first d codes changed,
    for every depth d (raw numbering, then after aligning each level by maximum overlap).
    """
    prev = previous.table.set_index("item_id")
    shared = inputs.items["item_id"].isin(prev.index).to_numpy()
    if not shared.any():
        return {}
    new_raw = model.encode(inputs.x[shared], inputs.mask[shared]).numpy()  # (S, L)
    old = np.stack(prev.loc[inputs.items["item_id"][shared], "sid"].to_list())[:, : model.config.levels]
    perm = align_codes(old, new_raw, model.config.codebook_size)  # (L, K)
    model.code_perm.copy_(torch.from_numpy(perm))
    new = model.encode(inputs.x[shared], inputs.mask[shared]).numpy()
    out = {"stability_items": float(shared.sum())}
    for depth in range(1, model.config.levels + 1):
        out[f"raw_prefix_changed_d{depth}"] = hl.prefix_changed(old, new_raw, depth)
        out[f"prefix_changed_d{depth}"] = hl.prefix_changed(old, new, depth)
    return out
