"""Validation: each bad-row kind is quarantined with its reason; nothing is dropped silently."""

from __future__ import annotations

import pandas as pd

from specrec.config import ValidateConfig
from specrec.data.schema import QUARANTINE_REASON, SOURCE_ROW
from specrec.data.validate import validate_interactions, validate_items

ROWS = [
    # user, item, rating, timestamp, expected reason (None = clean)
    ("1", "10", "4.0", "964982703", None),
    ("1", "11", "3.5", "964982704", None),
    ("1", "11", "3.5", "964982704", "exact duplicate"),
    ("", "12", "3.0", "964982705", "missing user_id"),
    ("2", "abc", "3.0", "964982705", "non-integer item_id"),
    ("2", "12.5", "3.0", "964982705", "non-integer item_id"),
    ("-3", "12", "3.0", "964982705", "non-integer user_id"),
    ("2", "13", "3.0", "yesterday", "unparsable timestamp"),
    ("2", "13", "3.0", "", "missing timestamp"),
    ("2", "14", "3.0", "99999999999999", "timestamp out of range"),
    ("2", "15", "3.0", "1", "timestamp out of range"),
    ("2", "16", "7.0", "964982705", "rating out of range"),
    ("2", "17", "good", "964982705", "non-numeric rating"),
    ("2", "18", "", "964982705", None),  # a missing rating is allowed: the column is optional
    ("3", "19.0", "5.0", "964982706", None),  # 19.0 is the integer 19
]


def _raw() -> pd.DataFrame:
    frame = pd.DataFrame([r[:4] for r in ROWS], columns=["user_id", "item_id", "rating", "timestamp"])
    frame[SOURCE_ROW] = range(1, len(frame) + 1)
    return frame.replace({"": None})


def test_each_bad_row_gets_its_reason() -> None:
    result = validate_interactions(_raw(), "s", ValidateConfig())
    expected = {i + 1: r[4] for i, r in enumerate(ROWS) if r[4] is not None}
    got = dict(zip(result.quarantine[SOURCE_ROW], result.quarantine[QUARANTINE_REASON], strict=True))
    assert set(got) == set(expected)
    for row, reason in expected.items():
        assert got[row].startswith(reason), (row, got[row], reason)


def test_nothing_is_lost_and_originals_are_kept() -> None:
    raw = _raw()
    result = validate_interactions(raw, "s", ValidateConfig())
    assert result.rows_in == len(raw) == len(result.clean) + result.rows_quarantined
    assert sum(result.by_reason.values()) == result.rows_quarantined
    bad = result.quarantine.set_index(SOURCE_ROW)
    assert bad.loc[5, "item_id"] == "abc" and bad.loc[8, "timestamp"] == "yesterday"


def test_clean_rows_are_typed() -> None:
    clean = validate_interactions(_raw(), "s", ValidateConfig()).clean
    assert clean["user_id"].dtype == "int64" and clean["item_id"].dtype == "int64"
    assert str(clean["timestamp"].dt.tz) == "UTC"
    assert clean["item_id"].tolist() == [10, 11, 18, 19]
    assert clean["rating"].isna().tolist() == [False, False, True, False]


def test_iso_timestamps_and_numeric_frames() -> None:
    raw = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": [5.0, 6.5, float("nan")],
            "timestamp": ["2019-01-02T03:04:05Z", "2019-01-02", "2019-13-40"],
        }
    )
    result = validate_interactions(raw, "iso", ValidateConfig())
    assert len(result.clean) == 1
    assert result.clean["timestamp"][0] == pd.Timestamp("2019-01-02T03:04:05Z")
    assert set(result.by_reason) == {"non-integer item_id", "missing item_id"}


def test_items_duplicates_and_bad_ids_are_quarantined() -> None:
    raw = pd.DataFrame(
        {
            "item_id": ["1", "2", "2", "x"],
            "title": ["A", "B", "B again", "C"],
            "genres": ["Comedy", None, "Drama", ""],
        }
    )
    result = validate_items(raw)
    assert result.clean["item_id"].tolist() == [1, 2]
    assert result.clean["title"].tolist() == ["A", "B"] and result.clean["genres"].tolist() == ["Comedy", ""]
    assert result.clean["tags"].tolist() == ["", ""]
    assert result.by_reason == {"duplicate item_id": 1, "non-integer item_id": 1}
