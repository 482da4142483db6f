"""Stage `split`: a global time split at the clock's start, and a leave-one-out view for offline evaluation.

history.parquet: events before clock.start (what the base FM trains on).
replay.parquet:  events from clock.start on, each with its 1-based `cycle` (<NA> after the last cycle).
loo.parquet:     per user with at least split.loo_min_events history events: the training prefix, the
                 validation item (second-last) and the test item (last), all from history only.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from specrec.clock import ReplayClock
from specrec.config import Config
from specrec.data.prepare import sequences
from specrec.io import read_parquet, write_json, write_parquet
from specrec.runtime import stage_main

log = logging.getLogger(__name__)


def time_split(events: pd.DataFrame, clock: ReplayClock) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events before the clock's start, and the rest tagged with their cycle."""
    before = events["timestamp"] < clock.start
    replay = events.loc[~before].assign(cycle=clock.assign(events.loc[~before, "timestamp"]))
    return events.loc[before].reset_index(drop=True), replay.reset_index(drop=True)


def leave_one_out(history: pd.DataFrame, min_events: int) -> pd.DataFrame:
    """Last item = test, second-last = validation, the rest = training prefix, per eligible user."""
    seqs = sequences(history)
    seqs = seqs[seqs["items"].str.len() >= min_events]
    return pd.DataFrame(
        {
            "user_idx": seqs["user_idx"].to_numpy(),
            "train_items": seqs["items"].str[:-2].to_numpy(),
            "train_timestamps": seqs["timestamps"].str[:-2].to_numpy(),
            "valid_item": seqs["items"].str[-2].to_numpy(),
            "valid_timestamp": seqs["timestamps"].str[-2].to_numpy(),
            "test_item": seqs["items"].str[-1].to_numpy(),
            "test_timestamp": seqs["timestamps"].str[-1].to_numpy(),
        }
    )


def cycle_summary(history: pd.DataFrame, replay: pd.DataFrame, clock: ReplayClock) -> list[dict[str, Any]]:
    """Per cycle: events, users, and items/users first seen in that cycle."""
    seen_items, seen_users = set(history["item_idx"]), set(history["user_idx"])
    rows = []
    for cycle in clock.cycles():
        ev = replay[replay["cycle"] == cycle.index]
        items, users = set(ev["item_idx"]), set(ev["user_idx"])
        rows.append(
            {
                "cycle": cycle.index,
                "as_of": cycle.name,
                "events": len(ev),
                "users": len(users),
                "items": len(items),
                "new_items": len(items - seen_items),
                "new_users": len(users - seen_users),
            }
        )
        seen_items |= items
        seen_users |= users
    return rows


def run(cfg: Config) -> dict[str, Any]:
    """Split the prepared interactions; write outputs and metrics."""
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    clock = ReplayClock.from_config(cfg.clock)
    history, replay = time_split(events, clock)
    loo = leave_one_out(history, cfg.split.loo_min_events)
    dst = cfg.path(cfg.paths.split)
    write_parquet(history, dst / "history.parquet")
    write_parquet(replay, dst / "replay.parquet")
    write_parquet(loo, dst / "loo.parquet")
    cycles = cycle_summary(history, replay, clock)
    metrics = {
        "history_events": len(history),
        "replay_events": int(replay["cycle"].notna().sum()),
        "events_after_last_cycle": int(replay["cycle"].isna().sum()),
        "loo_users": len(loo),
        "loo_users_too_short": int(history["user_idx"].nunique() - len(loo)),
        "cycle_events_min": min(c["events"] for c in cycles),
        "cycles": cycles,
    }
    write_json(metrics, cfg.path(cfg.paths.metrics) / "split.json")
    log.info(
        "split: %d history events, %d replay events in %d cycles, %d leave-one-out users",
        len(history),
        metrics["replay_events"],
        clock.n_cycles,
        len(loo),
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.data.split [--params params.yaml]`."""
    stage_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
