"""`item_stats`: real-time statistical features of items from the newest events (model-free).

For every item known at as_of: events in the last cycle and the last 7 cycles, the trend (last cycle
against the 7-cycle mean; above 1 means rising), the mean rating of all known events, and the time of
its newest event. Every known item is written each run, so counts that fell to zero are written too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from specrec.clock import EventLog, to_utc
from specrec.config import Config, parse_duration
from specrec.io import read_parquet
from specrec.nearline.materialize import history_file, write_batch
from specrec.nearline.store import offline_dir

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

VIEW = "item_stats"


def compute_item_stats(known: pd.DataFrame, as_of: pd.Timestamp, cadence: pd.Timedelta) -> pd.DataFrame:
    """One row per item with events before as_of (`known` holds only such events)."""
    last1 = known["timestamp"] >= as_of - cadence
    last7 = known["timestamp"] >= as_of - 7 * cadence
    g = known.assign(c1=last1.astype("int64"), c7=last7.astype("int64")).groupby("item_id")
    stats = g.agg(
        count_1c=("c1", "sum"),
        count_7c=("c7", "sum"),
        mean_rating=("rating", "mean"),
        last_event_ts=("timestamp", "max"),
    ).reset_index()
    mean7 = stats["count_7c"] / 7.0
    stats["trend"] = np.where(mean7 > 0, stats["count_1c"] / mean7.where(mean7 > 0, 1.0), 0.0).astype(
        "float32"
    )
    stats["mean_rating"] = stats["mean_rating"].astype("float32")
    return stats.assign(event_timestamp=as_of)


def update_item_stats(cfg: Config, as_of: object, store: FeatureStore) -> dict[str, float]:
    """Compute and write item_stats at as_of; return rows, seconds, rows/s."""
    when = to_utc(as_of)
    start = time.perf_counter()
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    stats = compute_item_stats(
        EventLog(events).known_at(when), when, parse_duration("clock.cadence", cfg.clock.cadence)
    )
    folder = offline_dir(store, VIEW)
    for k in range(0, len(stats), cfg.feast.write_batch_rows):
        part = stats.iloc[k : k + cfg.feast.write_batch_rows]
        write_batch(
            store,
            part,
            folder / history_file(when, k // cfg.feast.write_batch_rows),
            cfg.feast.write_batch_rows,
            VIEW,
        )
    seconds = time.perf_counter() - start
    log.info("item_stats at %s: %d items in %.1fs", when.date(), len(stats), seconds)
    return {
        "rows_written": float(len(stats)),
        "seconds": seconds,
        "rows_per_s": len(stats) / max(seconds, 1e-9),
    }
