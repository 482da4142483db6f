"""Stage `prepare`: contiguous id maps, the item and user tables, per-user time-ordered sequences.

Item indices run 1..n_items (0 is padding for the models); user indices run 0..n_users-1. Outputs
under paths.prepared: interactions.parquet, items.parquet, users.parquet, sequences.parquet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from specrec.config import Config
from specrec.io import read_parquet, write_json, write_parquet
from specrec.runtime import stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The indexed interactions, item and user tables, and sequences."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    sequences: pd.DataFrame


def index_ids(interactions: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add user_idx (from 0) and item_idx (from 1) in id order; every catalogue item gets an index."""
    item_ids = pd.Index(items["item_id"]).union(pd.Index(interactions["item_id"].unique())).sort_values()
    user_ids = pd.Index(interactions["user_id"].unique()).sort_values()
    events = interactions.assign(
        user_idx=user_ids.get_indexer(interactions["user_id"]).astype("int64"),
        item_idx=item_ids.get_indexer(interactions["item_id"]).astype("int64") + 1,
    )
    catalogue = items.set_index("item_id").reindex(item_ids).fillna("").rename_axis("item_id").reset_index()
    catalogue.insert(0, "item_idx", range(1, len(catalogue) + 1))
    return events, catalogue


def order_events(events: pd.DataFrame) -> pd.DataFrame:
    """Sort by time, keeping the source order of same-time events (stable), then number them."""
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events.assign(event_id=range(len(events)))


def _item_table(events: pd.DataFrame, catalogue: pd.DataFrame) -> pd.DataFrame:
    """Catalogue plus first-seen time and interaction count per item."""
    stats = events.groupby("item_idx")["timestamp"].agg(first_seen="min", n_events="size")
    out = catalogue.join(stats, on="item_idx")
    return out.assign(n_events=out["n_events"].fillna(0).astype("int64"))


def _user_table(events: pd.DataFrame) -> pd.DataFrame:
    """Users with their id, event count, and first/last event time."""
    g = events.groupby("user_idx")
    users = g.agg(
        user_id=("user_id", "first"),
        n_events=("timestamp", "size"),
        first_seen=("timestamp", "min"),
        last_seen=("timestamp", "max"),
    )
    return users.reset_index()


def sequences(events: pd.DataFrame) -> pd.DataFrame:
    """One row per user: item_idx and unix-second timestamps as time-ordered lists."""
    ordered = events.sort_values(["user_idx", "event_id"], kind="stable")
    seconds = ordered["timestamp"].astype("int64") // 1_000_000_000
    grouped = ordered.assign(ts=seconds).groupby("user_idx", sort=True)
    return pd.DataFrame(
        {"items": grouped["item_idx"].agg(list), "timestamps": grouped["ts"].agg(list)}
    ).reset_index()


def prepare(interactions: pd.DataFrame, items: pd.DataFrame) -> Prepared:
    """Index, order and group the ingested data."""
    events, catalogue = index_ids(interactions, items)
    events = order_events(events)
    return Prepared(events, _item_table(events, catalogue), _user_table(events), sequences(events))


def run(cfg: Config) -> Prepared:
    """Read the ingest outputs, prepare, write outputs and metrics."""
    src = cfg.path(cfg.paths.ingested)
    out = prepare(
        read_parquet(src / "interactions.parquet", "ingested interactions"),
        read_parquet(src / "items.parquet", "ingested items"),
    )
    dst = cfg.path(cfg.paths.prepared)
    for name in ("interactions", "items", "users", "sequences"):
        write_parquet(getattr(out, name), dst / f"{name}.parquet")
    lengths = out.sequences["items"].str.len()
    metrics = {
        "users": len(out.users),
        "items": len(out.items),
        "interactions": len(out.interactions),
        "items_never_interacted": int((out.items["n_events"] == 0).sum()),
        "sequence_length_median": float(lengths.median()),
        "sequence_length_max": int(lengths.max()),
    }
    write_json(metrics, cfg.path(cfg.paths.metrics) / "prepare.json")
    log.info("prepare: %s", metrics)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.data.prepare [--params params.yaml]`."""
    stage_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
