"""Stage `ingest`: load the configured source, validate every row, quarantine the bad ones.

Outputs (under paths.ingested / paths.quarantine): interactions.parquet and items.parquet in the
canonical schema; the quarantined rows with a `reason` column; metrics/ingest.json with counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from specrec.config import Config
from specrec.data.loaders import RawData, load
from specrec.data.schema import empty_items
from specrec.data.validate import Validated, validate_interactions, validate_items
from specrec.errors import DataError
from specrec.io import write_json, write_parquet
from specrec.runtime import stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Validated interactions and items, and the metrics of the stage."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    metrics: dict[str, object]


def _add_missing_items(items: pd.DataFrame, interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Give every interacted item a row (no text) so the item table covers the catalogue."""
    missing = pd.Index(interactions["item_id"].unique()).difference(pd.Index(items["item_id"]))
    if len(missing) == 0:
        return items, 0
    extra = empty_items().reindex(range(len(missing)))
    extra["item_id"] = missing.to_numpy()
    extra[["title", "genres", "tags"]] = ""
    return pd.concat([items, extra.astype(items.dtypes.to_dict())], ignore_index=True), len(missing)


def _check_share(what: str, v: Validated, limit: float, where: Path) -> None:
    """Fail, naming the reasons, when more than `limit` of the rows were quarantined."""
    if v.share > limit:
        raise DataError(
            f"{v.rows_quarantined} of {v.rows_in} {what} rows ({v.share:.1%}) failed validation, more than "
            f"validate.max_quarantine_share = {limit:.1%}. Reasons: {v.by_reason}. "
            f"The rows are kept in {where}; "
            "fix the source or its loader settings (data.* in params.yaml), or raise the threshold."
        )


def validate_raw(raw: RawData, cfg: Config) -> tuple[Validated, Validated]:
    """Validate interactions and items of a loaded source."""
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, cfg.validate)
    items_raw = raw.items if raw.items is not None else empty_items()
    return inter, validate_items(items_raw)


def ingest(cfg: Config) -> IngestResult:
    """Load, validate and quarantine; write outputs and metrics; fail past the quarantine threshold."""
    raw = load(cfg.data, cfg.root)
    inter, items = validate_raw(raw, cfg)
    qdir = cfg.path(cfg.paths.quarantine)
    write_parquet(inter.quarantine, qdir / "interactions.parquet")
    write_parquet(items.quarantine, qdir / "items.parquet")
    catalogue, n_added = _add_missing_items(items.clean, inter.clean)
    metrics = {
        "source": raw.description,
        "interactions_in": inter.rows_in,
        "interactions_ok": len(inter.clean),
        "interactions_quarantined": inter.rows_quarantined,
        "interactions_quarantined_by_reason": inter.by_reason,
        "items_in": items.rows_in,
        "items_ok": len(items.clean),
        "items_quarantined": items.rows_quarantined,
        "items_quarantined_by_reason": items.by_reason,
        "items_without_metadata": n_added,
        "users": int(inter.clean["user_id"].nunique()),
        "items": len(catalogue),
    }
    write_json(metrics, cfg.path(cfg.paths.metrics) / "ingest.json")
    log.info(
        "ingest: %d interactions ok, %d quarantined %s; %d items (%d without metadata)",
        len(inter.clean),
        inter.rows_quarantined,
        inter.by_reason,
        len(catalogue),
        n_added,
    )
    _check_share("interaction", inter, cfg.validate.max_quarantine_share, qdir / "interactions.parquet")
    _check_share("item", items, cfg.validate.max_quarantine_share, qdir / "items.parquet")
    out = cfg.path(cfg.paths.ingested)
    write_parquet(inter.clean, out / "interactions.parquet")
    write_parquet(catalogue, out / "items.parquet")
    return IngestResult(inter.clean, catalogue, metrics)


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.data.ingest [--params params.yaml]`."""
    stage_main(ingest, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
