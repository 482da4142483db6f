"""The ingest stage end to end: outputs, metrics, quarantine file, and the threshold's clear failure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from specrec.config import Config, DataConfig, TableConfig, ValidateConfig
from specrec.data import prepare, split
from specrec.data.ingest import ingest
from specrec.errors import DataError


def _table_cfg(cfg: Config, tmp_path: Path, bad_rows: int, share: float) -> Config:
    good = [
        (u, i, 1_500_000_000 + 60 * k) for k, (u, i) in enumerate((u, i) for u in range(5) for i in range(8))
    ]
    bad = [("u?", 1, 1_500_000_000)] * bad_rows
    path = tmp_path / "events.csv"
    pd.DataFrame(good + bad, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    data = DataConfig(source="table", path=str(path), table=TableConfig())
    return dataclasses.replace(cfg, data=data, validate=ValidateConfig(max_quarantine_share=share))


def test_ingest_under_threshold_writes_everything(project_cfg: Config, tmp_path: Path) -> None:
    cfg = _table_cfg(project_cfg, tmp_path, bad_rows=1, share=0.05)
    result = ingest(cfg)
    assert len(result.interactions) == 40
    quarantine = pd.read_parquet(Path(cfg.paths.quarantine) / "interactions.parquet")
    assert quarantine["reason"].tolist() == ["non-integer user_id"] and quarantine["user_id"].tolist() == [
        "u?"
    ]
    metrics = json.loads((Path(cfg.paths.metrics) / "ingest.json").read_text())
    assert metrics["interactions_in"] == 41 and metrics["interactions_quarantined"] == 1
    assert metrics["items_without_metadata"] == 8  # a table source has no item file: rows are made for them
    assert pd.read_parquet(Path(cfg.paths.ingested) / "items.parquet")["item_id"].tolist() == list(range(8))


def test_ingest_past_threshold_fails_clearly_and_keeps_the_rows(project_cfg: Config, tmp_path: Path) -> None:
    cfg = _table_cfg(project_cfg, tmp_path, bad_rows=10, share=0.05)
    with pytest.raises(DataError) as err:
        ingest(cfg)
    message = str(err.value)
    assert "10 of 50 interaction rows (20.0%)" in message and "validate.max_quarantine_share" in message
    assert "non-integer user_id" in message
    assert len(pd.read_parquet(Path(cfg.paths.quarantine) / "interactions.parquet")) == 10
    assert not (Path(cfg.paths.ingested) / "interactions.parquet").exists()


def test_shipped_pipeline_outputs(project_cfg: Config) -> None:
    ingest(project_cfg)
    prepared = prepare.run(project_cfg)
    metrics = split.run(project_cfg)
    assert len(prepared.items) == 9_742 and prepared.items["item_idx"].tolist() == list(range(1, 9_743))
    assert len(prepared.users) == 610 and prepared.users["user_idx"].tolist() == list(range(610))
    assert len(prepared.interactions) == 100_836
    seqs = prepared.sequences
    assert seqs["items"].str.len().sum() == 100_836
    assert all((pd.Series(ts).diff().dropna() >= 0).all() for ts in seqs["timestamps"].head(50))
    assert (
        metrics["history_events"] + metrics["replay_events"] + metrics["events_after_last_cycle"] == 100_836
    )
    assert metrics["cycle_events_min"] >= 200  # params.yaml promises enough events per cycle
    loo = pd.read_parquet(Path(project_cfg.paths.split) / "loo.parquet")
    history = pd.read_parquet(Path(project_cfg.paths.split) / "history.parquet")
    last = history.sort_values("event_id").groupby("user_idx")["item_idx"].last()
    assert (loo.set_index("user_idx")["test_item"] == last.loc[loo["user_idx"]]).all()
    assert (history["timestamp"] < pd.Timestamp(project_cfg.clock.start, tz="UTC")).all()
