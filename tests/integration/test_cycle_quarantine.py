"""A cycle whose events include malformed rows: the pipeline's ingest quarantines them with their reasons,
the rest is ingested and prepared, and the cycle is admitted with its good events and reports how many of
its rows were quarantined (the fault test 'a cycle file with malformed rows' of issue 10)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from specrec.clock import ReplayClock
from specrec.config import ClockConfig, Config, DataConfig, TableConfig, ValidateConfig
from specrec.data import prepare
from specrec.data.ingest import ingest
from specrec.replay.cycle import ingest_cycle

START = pd.Timestamp("2018-01-01", tz="UTC")
T0 = int(START.timestamp())


def _source(tmp_path: Path) -> tuple[Path, int]:
    """History before the first cycle, the cycle's good events, and malformed rows (most in the window)."""
    pairs = [(u, i) for u in range(5) for i in range(8)]
    history = [(u, i, T0 - 3 * 86_400 + 60 * k) for k, (u, i) in enumerate(pairs)]
    new = [(u, i) for u in range(5) for i in range(8, 12)]
    window = [(u, i, T0 + 3_600 + 60 * k) for k, (u, i) in enumerate(new)]
    malformed = [
        ("u?", 1, T0 + 100),  # in the window
        (2, "", T0 + 200),  # in the window
        window[0],  # in the window: an exact duplicate of a good event
        (1, "x", T0 - 1_000),  # before the window
        (3, 4, "yesterday"),  # no time at all: no window
    ]
    path = tmp_path / "events.csv"
    rows = history + window + malformed
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path, len(window)


def test_malformed_rows_are_quarantined_reported_and_the_cycle_is_admitted(
    project_cfg: Config, tmp_path: Path
) -> None:
    path, good_in_window = _source(tmp_path)
    cfg = dataclasses.replace(
        project_cfg,
        data=DataConfig(source="table", path=str(path), table=TableConfig()),
        validate=ValidateConfig(max_quarantine_share=0.1),
        clock=ClockConfig(start=str(START.date()), cadence="1D", cycles=2),
    )
    ingest(cfg)
    quarantine = pd.read_parquet(Path(cfg.paths.quarantine) / "interactions.parquet")
    assert sorted(quarantine["reason"]) == sorted(
        [
            "non-integer user_id",
            "missing item_id",
            "exact duplicate",
            "non-integer item_id",
            "unparsable timestamp (expected unit 's')",
        ]
    )
    assert quarantine["user_id"].tolist()[:1] == ["u?"]  # the original values are kept
    metrics = json.loads((Path(cfg.paths.metrics) / "ingest.json").read_text())
    assert metrics["interactions_quarantined"] == 5 and metrics["interactions_in"] == 40 + good_in_window + 5

    prepare.run(cfg)
    admitted = ingest_cycle(cfg, ReplayClock.from_config(cfg.clock).cycle(1).as_of)
    assert admitted["events"] == good_in_window  # every good event of the window, nothing malformed
    assert admitted["quarantined"] == 3  # the malformed rows whose time falls in the window
    assert admitted["new_items"] == 4 and admitted["users"] == 5
