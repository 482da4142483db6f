"""Row-level validation: every input row ends up either clean or quarantined with a reason.

The first failing check names the reason. Nothing is dropped silently: `rows_in == rows_ok +
rows_quarantined` always holds, and the quarantine keeps the row's original values and source row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specrec.config import ValidateConfig, parse_timestamp
from specrec.data.schema import ITEM_TEXT_COLUMNS, QUARANTINE_REASON, SOURCE_ROW

_INT_TEXT = r"^\s*\+?\d{1,18}(\.0*)?\s*$"


@dataclass
class Validated:
    """Clean typed rows, quarantined raw rows with a reason, and counts by reason."""

    clean: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        """How many rows went to quarantine."""
        return len(self.quarantine)

    @property
    def share(self) -> float:
        """The quarantined share of the input."""
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0


class _Reasons:
    """The first failing reason per row."""

    def __init__(self, index: pd.Index) -> None:
        self.reason = pd.Series(pd.NA, index=index, dtype="string")

    def flag(self, mask: pd.Series, text: str) -> None:
        """Record `text` for rows in `mask` that have no reason yet."""
        self.reason[mask.fillna(False).astype(bool) & self.reason.isna()] = text

    @property
    def ok(self) -> pd.Series:
        """Rows with no reason."""
        return self.reason.isna()


def _blank(s: pd.Series) -> pd.Series:
    """Missing or empty after stripping."""
    return s.isna() | (s.astype("string").str.strip() == "")


def parse_ids(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Integer ids and a mask of values that are not non-negative integers."""
    if pd.api.types.is_integer_dtype(s):
        values = s.astype("Int64")
        bad = values.isna() | (values < 0)
    elif pd.api.types.is_float_dtype(s):
        finite = np.isfinite(s.to_numpy(dtype="float64", na_value=np.nan))
        bad = pd.Series(~finite, index=s.index) | (s % 1 != 0) | (s < 0) | (s >= 2**63)
        values = s.where(~bad).astype("Int64")
    else:
        text = s.astype("string")
        bad = ~text.str.match(_INT_TEXT).fillna(False).astype(bool)
        values = text.where(~bad).str.strip().str.split(".").str[0].astype("Int64")
    return values, bad


def parse_times(s: pd.Series, unit: str) -> pd.Series:
    """UTC timestamps; NaT where a value cannot be read."""
    if unit == "iso":
        return pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
    numbers = pd.to_numeric(s, errors="coerce")
    numbers = numbers.where(np.isfinite(numbers.astype("float64")))
    return pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")


def _check_ids(raw: pd.DataFrame, reasons: _Reasons, columns: tuple[str, ...]) -> dict[str, pd.Series]:
    """Flag missing and non-integer ids; return the parsed ids."""
    parsed = {}
    for col in columns:
        reasons.flag(_blank(raw[col]), f"missing {col}")
        parsed[col], bad = parse_ids(raw[col])
        reasons.flag(bad, f"non-integer {col}")
    return parsed


def _check_number(raw: pd.DataFrame, col: str, lo: float, hi: float, reasons: _Reasons) -> pd.Series:
    """An optional numeric column: empty is allowed, text or out-of-range is not."""
    if col not in raw:
        return pd.Series(np.nan, index=raw.index, dtype="float64")
    values = pd.to_numeric(raw[col], errors="coerce").astype("float64")
    reasons.flag(values.isna() & ~_blank(raw[col]), f"non-numeric {col}")
    reasons.flag((values < lo) | (values > hi), f"{col} out of range [{lo:g}, {hi:g}]")
    return values


def _split(raw: pd.DataFrame, clean: pd.DataFrame, reasons: _Reasons) -> Validated:
    """Separate clean rows from quarantined ones and count the reasons."""
    bad = ~reasons.ok
    quarantine = raw.loc[bad].astype("string").assign(**{QUARANTINE_REASON: reasons.reason[bad]})
    if SOURCE_ROW in raw:
        quarantine[SOURCE_ROW] = raw.loc[bad, SOURCE_ROW].astype("int64")
    counts = reasons.reason[bad].value_counts().to_dict()
    return Validated(
        clean.loc[reasons.ok].reset_index(drop=True),
        quarantine.reset_index(drop=True),
        len(raw),
        {str(k): int(v) for k, v in counts.items()},
    )


def validate_interactions(raw: pd.DataFrame, timestamp_unit: str, cfg: ValidateConfig) -> Validated:
    """Type and check interaction rows; quarantine the ones that fail."""
    reasons = _Reasons(raw.index)
    ids = _check_ids(raw, reasons, ("user_id", "item_id"))
    reasons.flag(_blank(raw["timestamp"]), "missing timestamp")
    ts = parse_times(raw["timestamp"], timestamp_unit)
    lo = parse_timestamp("validate.timestamp_min", cfg.timestamp_min)
    hi = parse_timestamp("validate.timestamp_max", cfg.timestamp_max)
    out_of_range = f"timestamp out of range [{lo.date()}, {hi.date()}]"
    if timestamp_unit != "iso":  # a number too large for a datetime is out of range, not unparsable
        reasons.flag(ts.isna() & pd.to_numeric(raw["timestamp"], errors="coerce").notna(), out_of_range)
    reasons.flag(ts.isna(), f"unparsable timestamp (expected unit {timestamp_unit!r})")
    reasons.flag((ts < lo) | (ts > hi), out_of_range)
    rating = _check_number(raw, "rating", cfg.rating_min, cfg.rating_max, reasons)
    weight = _check_number(raw, "weight", 0.0, float("inf"), reasons)
    clean = pd.DataFrame(
        {
            "user_id": ids["user_id"],
            "item_id": ids["item_id"],
            "timestamp": ts,
            "rating": rating,
            "weight": weight,
        }
    )
    dup = clean.where(reasons.ok).duplicated(keep="first") & reasons.ok
    reasons.flag(dup, "exact duplicate")
    result = _split(raw, clean, reasons)
    result.clean = result.clean.astype({"user_id": "int64", "item_id": "int64"})
    return result


def validate_items(raw: pd.DataFrame) -> Validated:
    """Type and check item rows: integer, unique ids; missing text becomes ""."""
    reasons = _Reasons(raw.index)
    ids = _check_ids(raw, reasons, ("item_id",))
    clean = pd.DataFrame({"item_id": ids["item_id"]})
    for col in ITEM_TEXT_COLUMNS:
        clean[col] = raw[col].astype("string").fillna("").str.strip() if col in raw else ""
    dup = clean["item_id"].where(reasons.ok).duplicated(keep="first") & reasons.ok
    reasons.flag(dup, "duplicate item_id")
    result = _split(raw, clean, reasons)
    result.clean = result.clean.astype({"item_id": "int64", **{c: "string" for c in ITEM_TEXT_COLUMNS}})
    return result
