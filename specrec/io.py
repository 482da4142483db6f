"""Small, atomic file writers shared by the stages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from specrec.errors import DataError


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of `path`; renamed over it once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write a frame as parquet; a reader never sees a half-written file."""
    tmp = _atomic_target(path)
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def write_json(payload: dict[str, Any], path: Path) -> Path:
    """Write pretty, key-sorted JSON (metrics files diff well in git and `dvc metrics diff`)."""
    tmp = _atomic_target(path)
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def read_parquet(path: Path, what: str) -> pd.DataFrame:
    """Read a stage output, saying which stage to run when it is missing."""
    if not path.exists():
        raise DataError(f"{what} not found at {path}; run `dvc repro` (or the stage that writes it) first.")
    return pd.read_parquet(path)
