"""Loaders: read each supported source into raw frames with the canonical column names.

Values stay as read (ids as text, timestamps as text or numbers) so validation can quarantine a bad
row with its original content instead of a loader crashing or coercing it away.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from specrec.config import SEQUENCE_ALIGN, DataConfig, parse_duration, parse_timestamp
from specrec.data.download import KNOWN_ARCHIVES, fetch
from specrec.data.schema import SOURCE_ROW
from specrec.errors import DataError

log = logging.getLogger(__name__)

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class RawData:
    """What a loader read: raw interactions and items with canonical names, and how to read the time."""

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    timestamp_unit: str  # "s", "ms", "us", "ns" for numbers, "iso" for date strings
    description: str


def _need(path: Path, what: str) -> Path:
    """Return `path` or fail with a message saying what was expected there."""
    if not path.exists():
        raise DataError(f"{what} not found at {path}; check data.path in params.yaml.")
    return path


def _with_row_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Number rows as in the source (1-based, header excluded) so quarantined rows can be found."""
    frame = frame.reset_index(drop=True)
    frame[SOURCE_ROW] = range(1, len(frame) + 1)
    return frame


def _aggregate_tags(tags: pd.DataFrame) -> pd.DataFrame:
    """One pipe-separated tag string per item, tags in order of first use."""
    tags = tags.dropna(subset=["item_id", "tag"])
    tags = tags.assign(tag=tags["tag"].str.strip()).drop_duplicates(subset=["item_id", "tag"])
    return tags.groupby("item_id", sort=False)["tag"].agg("|".join).rename("tags").reset_index()


def read_movielens_csv(folder: Path) -> RawData:
    """The MovieLens csv layout (ml-latest-small, ml-20m, ml-25m): ratings.csv, movies.csv, tags.csv."""
    ratings = pd.read_csv(
        _need(folder / "ratings.csv", "ratings.csv"), dtype=str, keep_default_na=False, na_values=[""]
    )
    interactions = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    items = pd.read_csv(_need(folder / "movies.csv", "movies.csv"), dtype=str, keep_default_na=False)
    items = items.rename(columns={"movieId": "item_id"})
    items["genres"] = items["genres"].replace("(no genres listed)", "")
    if (folder / "tags.csv").exists():
        tags = pd.read_csv(folder / "tags.csv", dtype=str, keep_default_na=False, na_values=[""])
        items = items.merge(
            _aggregate_tags(tags.rename(columns={"movieId": "item_id"})), on="item_id", how="left"
        )
    return RawData(_with_row_numbers(interactions), _with_row_numbers(items), "s", f"MovieLens csv {folder}")


def _read_ml100k(folder: Path) -> RawData:
    """ml-100k: u.data (tab-separated) and u.item (pipe-separated, latin-1, genre flags)."""
    ratings = pd.read_csv(
        _need(folder / "u.data", "u.data"),
        sep="\t",
        header=None,
        dtype=str,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    cols = ["item_id", "title", "release", "video_release", "url", *ML100K_GENRES]
    raw = pd.read_csv(
        folder / "u.item",
        sep="|",
        header=None,
        names=cols,
        dtype=str,
        encoding="latin-1",
        keep_default_na=False,
    )
    flags = raw[list(ML100K_GENRES)] == "1"
    genres = flags.apply(
        lambda row: "|".join(g for g, on in zip(ML100K_GENRES, row, strict=True) if on), axis=1
    )
    items = pd.DataFrame({"item_id": raw["item_id"], "title": raw["title"], "genres": genres})
    return RawData(_with_row_numbers(ratings), _with_row_numbers(items), "s", f"MovieLens 100k {folder}")


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    """A `::`-separated MovieLens .dat file (latin-1)."""
    lines = _need(path, path.name).read_text(encoding="latin-1").splitlines()
    rows = [line.split("::", len(names) - 1) for line in lines if line]
    return pd.DataFrame([r + [None] * (len(names) - len(r)) for r in rows], columns=names, dtype="string")


def _read_ml1m(folder: Path) -> RawData:
    """ml-1m: ratings.dat and movies.dat, `::`-separated."""
    ratings = _read_dat(folder / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    items = _read_dat(folder / "movies.dat", ["item_id", "title", "genres"])
    return RawData(_with_row_numbers(ratings), _with_row_numbers(items), "s", f"MovieLens 1M {folder}")


def _extract(archive: Path, into: Path, name: str) -> Path:
    """Unzip `archive` once; return the folder named `name` inside it."""
    folder = into / name
    marker = folder / ".extracted"
    if not marker.exists():
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(into)
        except zipfile.BadZipFile:
            raise DataError(
                f"{archive} is not a valid zip archive; delete it and run ingest again."
            ) from None
        if not folder.is_dir():
            raise DataError(
                f"{archive} has no top-level folder {name}/; it is not a MovieLens {name} archive."
            )
        marker.touch()
    return folder


def read_movielens_archive(name: str, base_url: str, cache_dir: Path, sha256: str | None = None) -> RawData:
    """Download (once) and read an official MovieLens archive, verified by sha256."""
    expected = sha256 or KNOWN_ARCHIVES[name][1]
    archive = fetch(f"{base_url.rstrip('/')}/{name}.zip", cache_dir / f"{name}.zip", expected)
    folder = _extract(archive, cache_dir, name)
    if name == "ml-100k":
        return _read_ml100k(folder)
    if name == "ml-1m":
        return _read_ml1m(folder)
    return read_movielens_csv(folder)


def read_sequence_file(
    path: Path, start: str = "2000-01-01", step: str = "1D", align: str = "start"
) -> RawData:
    """One line per user, `user item item ...` in time order, with synthetic times one `step` apart.

    align `start`: position k of every user gets start + k*step (every user begins at `start`).
    align `end`: every user's last event falls on the same instant, start + (L-1)*step for the longest
    sequence's length L, so "the newest events" are every user's last few, as in leave-one-out splits;
    with `start` the newest are the tails of the longest sequences only."""
    if align not in SEQUENCE_ALIGN:
        raise DataError(f"data.sequence.align={align!r} is invalid: use one of {SEQUENCE_ALIGN}.")
    t0 = parse_timestamp("data.sequence.start", start).value // 1_000_000_000
    dt = parse_duration("data.sequence.step", step).value // 1_000_000_000
    users: list[str] = []
    items: list[str] = []
    positions: list[np.ndarray] = []
    lines: list[int] = []
    with _need(path, "sequence file").open() as fh:
        for line_no, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            user, seq = tokens[0], tokens[1:]
            users.extend([user] * len(seq))
            items.extend(seq)
            positions.append(np.arange(len(seq), dtype=np.int64))
            lines.extend([line_no] * len(seq))
    if align == "end" and positions:
        longest = max(len(p) for p in positions)
        positions = [p + (longest - len(p)) for p in positions]
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": t0 + pos * dt, SOURCE_ROW: lines})
    return RawData(frame, None, "s", f"sequence file {path}")


def _read_any(path: Path) -> pd.DataFrame:
    """A csv or parquet file, by suffix; csv values are read as text."""
    if path.suffix == ".parquet":
        return pd.read_parquet(_need(path, "table"))
    if path.suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(_need(path, "table"), sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
    raise DataError(f"cannot read {path}: use a .csv, .tsv or .parquet file.")


def _map_columns(frame: pd.DataFrame, mapping: dict[str, str], path: Path) -> pd.DataFrame:
    """Rename source columns to canonical names, failing clearly on a missing one."""
    missing = [src for src in mapping.values() if src not in frame.columns]
    if missing:
        raise DataError(
            f"{path} has no column(s) {missing}; its columns are {list(frame.columns)}. "
            "Fix data.table.columns in params.yaml."
        )
    return frame.rename(columns={src: dst for dst, src in mapping.items()})[list(mapping)]


def read_table(
    path: Path,
    columns: dict[str, str],
    timestamp_unit: str,
    items_path: Path | None = None,
    item_columns: dict[str, str] | None = None,
) -> RawData:
    """Any csv/parquet with a mapping from canonical column names to the file's column names."""
    mapping = {c: columns.get(c, c) for c in ("user_id", "item_id", "timestamp")} | columns
    interactions = _map_columns(_read_any(path), mapping, path)
    items = None
    if items_path is not None:
        imap = {"item_id": "item_id"} | (item_columns or {})
        items = _with_row_numbers(_map_columns(_read_any(items_path), imap, items_path))
    return RawData(_with_row_numbers(interactions), items, timestamp_unit, f"table {path}")


def load(cfg: DataConfig, root: Path) -> RawData:
    """Read the source chosen in params.yaml (`data.source`)."""
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else root / path
    cache = Path(cfg.cache_dir).expanduser()
    cache = cache if cache.is_absolute() else root / cache
    log.info("loading %s from %s", cfg.source, path)
    if cfg.source == "movielens_csv":
        return read_movielens_csv(path)
    if cfg.source == "movielens_archive":
        return read_movielens_archive(cfg.archive.name, cfg.archive.base_url, cache, cfg.archive.sha256)
    if cfg.source == "sequence":
        return read_sequence_file(path, cfg.sequence.start, cfg.sequence.step, cfg.sequence.align)
    items = None
    if cfg.table.items_path:
        items = Path(cfg.table.items_path)
        items = items if items.is_absolute() else root / items
    return read_table(path, cfg.table.columns, cfg.table.timestamp_unit, items, cfg.table.item_columns)
