"""Loaders: known counts of the shipped and benchmark data, and each layout read into the canonical schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from specrec.config import DataConfig, TableConfig, ValidateConfig
from specrec.data.loaders import load, read_movielens_csv, read_sequence_file, read_table
from specrec.data.validate import validate_interactions, validate_items
from specrec.errors import DataError


def test_shipped_movielens_counts(root: Path) -> None:
    raw = read_movielens_csv(root / "datasets" / "ml-latest-small")
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    items = validate_items(raw.items)
    assert inter.rows_quarantined == 0 and items.rows_quarantined == 0
    assert len(inter.clean) == 100_836
    assert inter.clean["user_id"].nunique() == 610
    assert len(items.clean) == 9_742
    assert inter.clean["timestamp"].min() == pd.Timestamp("1996-03-29 18:36:55", tz="UTC")
    toy_story = items.clean.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story (1995)" and "Animation" in toy_story["genres"]
    assert "pixar" in toy_story["tags"]


def test_shipped_dataset_carries_its_license(root: Path) -> None:
    readme = (root / "datasets" / "ml-latest-small" / "README.txt").read_text(errors="replace")
    assert "GroupLens" in readme and "redistribut" in readme.lower()


@pytest.mark.slow
def test_sports_sequence_file_counts(shared_data: Path) -> None:
    raw = read_sequence_file(shared_data / "amazon" / "Sports_and_Outdoors.txt")
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    assert inter.rows_quarantined == 0
    assert len(inter.clean) == 296_337
    assert inter.clean["user_id"].nunique() == 35_598
    assert inter.clean["item_id"].nunique() == 18_357


def test_sequence_format_times_are_monotone_per_user(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("1 5 6 7\n2 7 x\n\n3 9\n")
    raw = read_sequence_file(path, start="2001-01-01", step="1h")
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    assert inter.by_reason == {"non-integer item_id": 1}
    assert inter.quarantine["source_row"].tolist() == [2]  # the line number in the file
    u1 = inter.clean[inter.clean["user_id"] == 1]
    assert u1["item_id"].tolist() == [5, 6, 7]
    assert u1["timestamp"].diff().dropna().eq(pd.Timedelta("1h")).all()
    assert u1["timestamp"].iloc[0] == pd.Timestamp("2001-01-01", tz="UTC")


def test_sequence_format_aligned_at_the_end_has_every_last_event_at_one_instant(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("1 5 6 7 8\n2 7 9\n3 9\n")
    raw = read_sequence_file(path, start="2001-01-01", step="1h", align="end")
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    last = inter.clean.groupby("user_id")["timestamp"].max()
    assert last.nunique() == 1 and last.iloc[0] == pd.Timestamp("2001-01-01 03:00", tz="UTC")
    u2 = inter.clean[inter.clean["user_id"] == 2]
    assert u2["item_id"].tolist() == [7, 9]  # order kept, one step apart
    assert u2["timestamp"].tolist() == [pd.Timestamp("2001-01-01 02:00", tz="UTC"), last.iloc[0]]
    with pytest.raises(DataError, match="data.sequence.align='middle'"):
        read_sequence_file(path, align="middle")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_column_mapping(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "uid": ["7", "8"],
            "sku": ["100", "101"],
            "when": ["1600000000000", "1600000001000"],
            "stars": ["5", "4"],
            "extra": ["a", "b"],
        }
    )
    items = pd.DataFrame({"sku": ["100", "101"], "name": ["Ball", "Bat"]})
    path, items_path = tmp_path / f"events{suffix}", tmp_path / f"items{suffix}"
    for f, p in ((frame, path), (items, items_path)):
        f.to_csv(p, index=False) if suffix == ".csv" else f.to_parquet(p)
    cfg = DataConfig(
        source="table",
        path=str(path),
        table=TableConfig(
            columns={"user_id": "uid", "item_id": "sku", "timestamp": "when", "rating": "stars"},
            timestamp_unit="ms",
            items_path=str(items_path),
            item_columns={"item_id": "sku", "title": "name"},
        ),
    )
    raw = load(cfg, tmp_path)
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    assert inter.clean["user_id"].tolist() == [7, 8] and inter.clean["rating"].tolist() == [5.0, 4.0]
    assert inter.clean["timestamp"][0] == pd.Timestamp(1_600_000_000, unit="s", tz="UTC")
    assert validate_items(raw.items).clean["title"].tolist() == ["Ball", "Bat"]


def test_table_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    pd.DataFrame({"u": [1], "i": [2], "t": [3]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no column\(s\) \['uid'\].*data.table.columns"):
        read_table(path, {"user_id": "uid", "item_id": "i", "timestamp": "t"}, "s")


def test_missing_source_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ratings.csv not found.*data.path"):
        read_movielens_csv(tmp_path / "nowhere")
