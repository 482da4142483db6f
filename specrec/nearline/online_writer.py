"""Bulk writes into a Feast online store that store exactly the bytes Feast's own writers store.

Feast's write path (`FeatureStore.write_to_online_store`, `feast materialize`) builds one protobuf
object per value and issues one SQL statement or Redis command per row from Python. Here whole columns
are encoded at once with numpy into the very bytes Feast would store, so a plain
`FeatureStore.get_online_features` reads them back unchanged:

- entity keys as `feast.infra.key_encoding_utils.serialize_entity_key` (version 3; older versions call it),
- values as `ValueProto.SerializeToString()` (protobuf hand-encoded for the common types, Feast's own
  converter for the rest),
- SQLite: Feast's table `<project>_<view>`, its columns and its upsert, `executemany` in one
  transaction per batch; Redis: Feast's hash per entity (`<entity key><project>`), murmur3 field names of
  `<view>:<feature>`, the `_ts:<view>` timestamp and `key_ttl_seconds`, sent as pipelined raw RESP.

Other online stores (and SQLite with `vector_enabled`) go through `FeatureStore.write_to_online_store`.
Every batch is validated before anything of it is written (a whole DataFrame before its first row is),
and the store write of one batch runs on a background thread while the next batch is encoded.
Writes always overwrite, like Feast's SQLite store; Feast's Redis store instead skips rows whose event
time is not newer than the stored one (unless `skip_dedup`), which this writer does not do.
A column of byte strings is handled as `Rows`: a flat uint8 buffer plus per-row byte counts `(buf, lens)`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd

from specrec.errors import SpecrecError

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

Rows: TypeAlias = tuple[np.ndarray, np.ndarray]  # (flat uint8 bytes, per-row byte count)
Frames: TypeAlias = pd.DataFrame | Iterable[pd.DataFrame]

MAX_IDS = 20  # entity ids named in an error
_SCATTER_BYTES = 1 << 22  # bytes moved per index array in _concat (bounds that array to 32 MB)
_SQLITE_CACHE_KIB = 131_072  # page cache of the writer's own SQLite connection (128 MiB)
_SQLITE_ENTITIES_PER_STATEMENT = 100  # entities per multi-row INSERT
_SQLITE_MAX_PARAMS = 32_000  # SQLite allows 32766 parameters per statement by default
_EPOCH = datetime(1970, 1, 1)

# protobuf tags (field number << 3 | wire type) of feast.types.Value and the list messages.
_TAG = {
    "STRING": b"\x12",
    "INT32": b"\x18",
    "INT64": b"\x20",
    "DOUBLE": b"\x29",
    "FLOAT": b"\x35",
    "BOOL": b"\x38",
    "UNIX_TIMESTAMP": b"\x40",
    "INT32_LIST": b"\x6a",
    "INT64_LIST": b"\x72",
    "DOUBLE_LIST": b"\x7a",
    "FLOAT_LIST": b"\x82\x01",
}
_LIST_ITEM_TAG = b"\x0a"  # `repeated ... val = 1` of Int64List, FloatList, ... (packed)
_VARINT_SCALARS = {"INT32", "INT64", "BOOL", "UNIX_TIMESTAMP"}
_FLOAT_SCALARS = {"FLOAT": "<f4", "DOUBLE": "<f8"}
_INT_LISTS = {"INT32_LIST", "INT64_LIST"}
_FLOAT_LISTS = {"FLOAT_LIST": "<f4", "DOUBLE_LIST": "<f8"}
_TEXT_TYPES = {"STRING", "INT32", "INT64", "FLOAT", "DOUBLE", "BOOL"}  # Feast's value_text column
_KEY_TYPE_IDS = {"STRING": 2, "INT32": 3, "INT64": 4}  # feast.types.ValueType numbers


class OnlineWriteError(SpecrecError, ValueError):
    """Rows or columns were refused before writing; the message names them and what to do."""

    def __init__(self, message: str, problems: Mapping[str, tuple[list[Any], int]] | None = None) -> None:
        self.problems = dict(problems or {})
        super().__init__(message)


# ----------------------------------------------------------------------------- byte building blocks


def _empty_rows(n: int) -> Rows:
    """n rows of zero bytes."""
    return np.empty(0, np.uint8), np.zeros(n, np.int64)


def _const(data: bytes, mask: np.ndarray) -> Rows:
    """The same bytes on each row where mask is True, nothing elsewhere."""
    pattern = np.frombuffer(data, np.uint8)
    return np.tile(pattern, int(mask.sum())), mask.astype(np.int64) * len(data)


def _fixed(values: np.ndarray, mask: np.ndarray, dtype: str) -> Rows:
    """Little-endian bytes of each selected value (values: (n,) or (n, d))."""
    chosen = np.ascontiguousarray(values[mask], dtype=dtype)
    width = chosen.itemsize * (chosen.shape[1] if chosen.ndim == 2 else 1)
    return chosen.reshape(-1).view(np.uint8), mask.astype(np.int64) * width


def _varint_bytes(values: np.ndarray) -> Rows:
    """Protobuf base-128 varint of every value (int64; negatives take 10 bytes, as in protobuf)."""
    rest = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).copy()
    groups = np.zeros((len(rest), 10), np.uint8)
    keep = np.zeros((len(rest), 10), bool)
    keep[:, 0] = True
    for k in range(10):
        groups[:, k] = rest & 0x7F
        rest >>= np.uint64(7)
        more = rest != 0
        if not more.any():
            break
        groups[:, k] |= more.astype(np.uint8) << 7
        keep[:, k + 1] = more
    return groups[keep], keep.sum(axis=1).astype(np.int64)


def _varint(values: np.ndarray, mask: np.ndarray) -> Rows:
    """Varint of each selected value, nothing on the other rows."""
    buf, chosen_lens = _varint_bytes(values[mask])
    lens = np.zeros(len(mask), np.int64)
    lens[mask] = chosen_lens
    return buf, lens


def _decimal(values: np.ndarray) -> Rows:
    """ASCII decimal digits of each non-negative integer (RESP lengths)."""
    if len(values) == 0:
        return _empty_rows(0)
    width = len(str(int(values.max())))
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 10 + ord("0")
    keep = values[:, None] >= powers
    keep[:, -1] = True
    return digits.astype(np.uint8)[keep], keep.sum(axis=1).astype(np.int64)


def _from_list(items: list[bytes]) -> Rows:
    """Rows from Python bytes objects."""
    lens = np.fromiter(map(len, items), np.int64, len(items))
    return np.frombuffer(b"".join(items), np.uint8), lens


def _split(rows: Rows) -> list[bytes]:
    """Python bytes objects, one per row."""
    buf, lens = rows
    if len(lens) and lens.min() == lens.max():
        width = int(lens[0])
        return np.ascontiguousarray(buf).view(f"V{width}").tolist() if width else [b""] * len(lens)
    raw = buf.tobytes()
    ends = np.cumsum(lens)
    return [raw[s:e] for s, e in zip((ends - lens).tolist(), ends.tolist(), strict=True)]


def _concat(*parts: Rows) -> Rows:
    """Row-wise concatenation: row i of the result is row i of every part, in order."""
    n = len(parts[0][1])
    lens = np.asarray(np.sum([p[1] for p in parts], axis=0), dtype=np.int64)
    if n and all(p[1].min() == p[1].max() for p in parts):
        return _concat_fixed(parts, n), lens
    ends = np.cumsum(lens)
    out = np.empty(int(ends[-1]) if n else 0, np.uint8)
    pos = ends - lens
    for buf, part_lens in parts:
        _scatter(out, pos, buf, part_lens)
        pos = pos + part_lens
    return out, lens


def _concat_fixed(parts: tuple[Rows, ...], n: int) -> np.ndarray:
    """Row-wise concatenation of parts whose rows all have one width each: a 2-D copy."""
    widths = [int(p[1][0]) for p in parts]
    out = np.empty((n, sum(widths)), np.uint8)
    col = 0
    for (buf, _), width in zip(parts, widths, strict=True):
        out[:, col : col + width] = buf.reshape(n, width)
        col += width
    return out.reshape(-1)


def _scatter(out: np.ndarray, dest: np.ndarray, buf: np.ndarray, lens: np.ndarray) -> None:
    """Copy row i of (buf, lens) to out[dest[i]:], a bounded number of bytes per index array."""
    src_ends = np.cumsum(lens)
    src_starts = src_ends - lens
    row, n = 0, len(lens)
    while row < n:
        stop = max(int(np.searchsorted(src_ends, src_starts[row] + _SCATTER_BYTES, side="right")), row + 1)
        lo, hi = int(src_starts[row]), int(src_ends[stop - 1])
        if hi > lo:
            shift = np.repeat(dest[row:stop] - src_starts[row:stop], lens[row:stop])
            out[shift + np.arange(lo, hi)] = buf[lo:hi]
        row = stop


# ----------------------------------------------------------------------------- column extraction


@dataclass(frozen=True)
class Ragged:
    """A list column flattened: values of all present rows, per-row lengths, which rows are present."""

    flat: np.ndarray
    lens: np.ndarray  # (n,) length of each row's list (0 for missing rows)
    present: np.ndarray  # (n,) bool: row holds a list (not None/NaN)


def _flatten(series: pd.Series, dtype: str) -> Ragged:
    """Flatten a column of lists/arrays (None = missing row) into one array of `dtype`."""
    values = series.to_numpy(dtype=object)
    present = ~pd.isna(values) if values.size else np.zeros(0, bool)
    items = values[present]
    lens = np.zeros(len(values), np.int64)
    try:
        lens[present] = np.fromiter(map(len, items), np.int64, len(items))
        chunks = [np.asarray(v).reshape(-1) for v in items if len(v)]  # np.asarray([]) would be float
        flat = np.concatenate(chunks) if chunks else np.empty(0, dtype)
    except (TypeError, ValueError) as exc:
        raise OnlineWriteError(
            f"column {series.name!r}: every value must be a 1-D list or array (or None); {exc}"
        ) from exc
    return Ragged(_as_array(flat, dtype, series.name), lens, present)


def _as_array(flat: np.ndarray, dtype: str, name: object) -> np.ndarray:
    """List elements as `dtype`: None elements become NaN (floats) or 0 (ints, as Feast does)."""
    if flat.dtype == object:
        missing = pd.isna(flat)
        flat = np.asarray(np.where(missing, np.nan if dtype[1] == "f" else 0, flat).tolist())
    if flat.dtype.kind not in "biuf":
        raise OnlineWriteError(f"column {name!r} is a number list but holds {flat.dtype} values; cast them.")
    if dtype[1] == "i" and flat.dtype.kind == "f":
        raise OnlineWriteError(
            f"column {name!r} is an integer list but holds floats; cast its values to int64 first."
        )
    return flat.astype(dtype)


def _numbers(series: pd.Series, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as (values, present) with nulls (None/NaN/NA) absent."""
    present = series.notna().to_numpy()
    filled = series.where(pd.Series(present, index=series.index), 0)
    return filled.to_numpy(dtype=dtype), present


def _is_fast(series: pd.Series, vtype: str) -> bool:
    """Whether the column's dtype is one the numpy encoders take exactly as Feast would."""
    kind = series.dtype.kind
    if vtype in ("INT32", "INT64"):
        return kind in "iuf"
    if vtype in _FLOAT_SCALARS:
        return kind in "iuf"
    if vtype == "BOOL":
        return kind == "b"
    if vtype == "UNIX_TIMESTAMP":  # Feast turns an int column with nulls into floats, all of them null
        return kind == "M" or (kind in "iu" and not series.hasnans)
    if vtype == "STRING":
        return kind in "OSU" or isinstance(series.dtype, pd.StringDtype)
    return vtype in _INT_LISTS or vtype in _FLOAT_LISTS


# ----------------------------------------------------------------------------- value encoding


@dataclass
class Encoded:
    """One feature column encoded: Value bytes per row, and Feast's SQLite `value_text`/`value_num`."""

    values: Rows
    texts: list[str | None]
    nums: list[float | None]


def encode_values(series: pd.Series, vtype: str) -> Encoded:
    """ValueProto bytes of each row exactly as Feast serialises them for value type `vtype`."""
    if not _is_fast(series, vtype):
        return _encode_with_feast(series, vtype)
    if vtype == "STRING":
        return _encode_strings(series)
    if vtype in _VARINT_SCALARS:
        return _encode_varint_scalar(series, vtype)
    if vtype in _FLOAT_SCALARS:
        return _encode_float_scalar(series, vtype)
    if vtype in _INT_LISTS:
        return _no_text(_encode_list(_TAG[vtype], _int_payload(_flatten(series, "<i8"))))
    dtype = _FLOAT_LISTS[vtype]
    return _no_text(_encode_list(_TAG[vtype], _float_payload(_flatten(series, dtype), dtype)))


def _no_text(rows: Rows) -> Encoded:
    """An encoded column without value_text/value_num (lists and timestamps)."""
    n = len(rows[1])
    return Encoded(rows, [None] * n, [None] * n)


def _encode_strings(series: pd.Series) -> Encoded:
    """string_val = str(value); each distinct value is encoded once."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if pd.api.types.infer_dtype(uniques, skipna=True) not in ("string", "empty"):
        codes, uniques = pd.factorize(series.map(str, na_action="ignore"), use_na_sentinel=True)
    texts = [str(u) for u in uniques]
    values = [_TAG["STRING"] + _varint_bytes_one(len(b)) + b for b in (t.encode() for t in texts)]
    values.append(b"")  # code -1: null
    texts_out: list[str | None] = [*texts, None]
    take = codes.tolist()
    return Encoded(_from_list([values[c] for c in take]), [texts_out[c] for c in take], [None] * len(take))


def _varint_bytes_one(value: int) -> bytes:
    """Varint of one non-negative int."""
    buf, _ = _varint_bytes(np.array([value], np.int64))
    return buf.tobytes()


def _encode_varint_scalar(series: pd.Series, vtype: str) -> Encoded:
    """int32/int64/bool/unix_timestamp values: tag + varint; NaT timestamps become INT64_MIN as in Feast."""
    if vtype == "UNIX_TIMESTAMP" and series.dtype.kind == "M":
        seconds = series.to_numpy(dtype="datetime64[ns]").astype("datetime64[s]").astype(np.int64)
        present = np.ones(len(series), bool)  # Feast writes NaT as INT64_MIN, not as null
        return _no_text(_concat(_const(_TAG[vtype], present), _varint(seconds, present)))
    values, present = _numbers(series, "int64")
    rows = _concat(_const(_TAG[vtype], present), _varint(values, present))
    if vtype == "UNIX_TIMESTAMP":
        return _no_text(rows)
    if vtype == "BOOL":
        texts = [str(bool(v)) if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
        nums = [float(bool(v)) if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
        return Encoded(rows, texts, nums)
    texts = [str(v) if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
    nums = [float(v) if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
    return Encoded(rows, texts, nums)


def _encode_float_scalar(series: pd.Series, vtype: str) -> Encoded:
    """float/double values: tag + fixed 4/8 bytes; NaN is null, as in Feast."""
    dtype = _FLOAT_SCALARS[vtype]
    values, present = _numbers(series.astype("float64"), "float64")
    cast = values.astype(dtype)
    rows = _concat(_const(_TAG[vtype], present), _fixed(cast, present, dtype))
    nums = [v if p else None for v, p in zip(cast.astype(np.float64).tolist(), present.tolist(), strict=True)]
    return Encoded(rows, [None if v is None else repr(v) for v in nums], nums)


def _int_payload(ragged: Ragged) -> tuple[Rows, np.ndarray]:
    """Packed varints of each row's ints, and the rows that hold a list."""
    buf, item_lens = _varint_bytes(ragged.flat)
    sums = np.concatenate([[0], np.cumsum(item_lens)])
    ends = np.cumsum(ragged.lens)
    return (buf, sums[ends] - sums[ends - ragged.lens]), ragged.present


def _float_payload(ragged: Ragged, dtype: str) -> tuple[Rows, np.ndarray]:
    """Packed little-endian floats of each row, and the rows that hold a list."""
    flat = np.ascontiguousarray(ragged.flat, dtype=dtype)
    return (flat.view(np.uint8), ragged.lens * flat.itemsize), ragged.present


def _encode_list(tag: bytes, payload_present: tuple[Rows, np.ndarray]) -> Rows:
    """Value{<tag>: XxxList{val: packed payload}}; an empty list keeps its empty message, None is null."""
    payload, present = payload_present
    has_items = payload[1] > 0
    inner = _concat(_const(_LIST_ITEM_TAG, has_items), _varint(payload[1], has_items), payload)
    return _concat(_const(tag, present), _varint(inner[1], present), inner)


def _encode_with_feast(series: pd.Series, vtype: str) -> Encoded:
    """Any other type or dtype: Feast's own converter, on the column as Feast's write path sees it."""
    import pyarrow as pa
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    table = pa.Table.from_pandas(series.to_frame(), preserve_index=False)
    values = table.column(0).to_numpy(zero_copy_only=False)
    protos = python_values_to_proto_values(values, ValueType[vtype])
    texts, nums = zip(*(extract_text_and_num(p, True) for p in protos), strict=True) if protos else ((), ())
    return Encoded(_from_list([p.SerializeToString() for p in protos]), list(texts), list(nums))


# ----------------------------------------------------------------------------- entity keys


def encode_entity_keys(frame: pd.DataFrame, keys: list[tuple[str, str]], version: int = 3) -> Rows:
    """serialize_entity_key of each row's join keys (`keys`: (join key, value type name))."""
    if version < 3 or any(vtype not in _KEY_TYPE_IDS for _, vtype in keys):
        return _from_list(_entity_keys_with_feast(frame, keys, version))
    ordered = sorted(keys)
    n = len(frame)
    header = len(ordered).to_bytes(4, "little") + b"".join(
        _KEY_TYPE_IDS["STRING"].to_bytes(4, "little") + len(k.encode()).to_bytes(4, "little") + k.encode()
        for k, _ in ordered
    )
    parts = [_const(header, np.ones(n, bool))]
    parts += [_key_values(frame[name], vtype) for name, vtype in ordered]
    return _concat(*parts)


def _key_values(series: pd.Series, vtype: str) -> Rows:
    """One join key's `<type><length><value>` bytes per row."""
    everywhere = np.ones(len(series), bool)
    prefix = _KEY_TYPE_IDS[vtype].to_bytes(4, "little")
    if vtype == "STRING":
        codes, uniques = pd.factorize(series.map(str))
        encoded = [prefix + len(b).to_bytes(4, "little") + b for b in (u.encode() for u in uniques)]
        return _from_list([encoded[c] for c in codes.tolist()])
    dtype, width = ("<i8", 8) if vtype == "INT64" else ("<i4", 4)
    values = series.to_numpy(dtype="int64")
    return _concat(
        _const(prefix + width.to_bytes(4, "little"), everywhere), _fixed(values, everywhere, dtype)
    )


def _entity_keys_with_feast(frame: pd.DataFrame, keys: list[tuple[str, str]], version: int) -> list[bytes]:
    """Feast's serialize_entity_key row by row (join key types without a fast path, or old versions)."""
    import pyarrow as pa
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    table = pa.Table.from_pandas(frame[[k for k, _ in keys]], preserve_index=False)
    columns = [
        python_values_to_proto_values(table.column(k).to_numpy(zero_copy_only=False), ValueType[t])
        for k, t in keys
    ]
    names = [k for k, _ in keys]
    return [
        serialize_entity_key(EntityKey(join_keys=names, entity_values=list(vals)), version)
        for vals in zip(*columns, strict=True)
    ]


def encode_timestamps(micros: np.ndarray) -> Rows:
    """google.protobuf.Timestamp bytes (seconds, nanos) of UTC microseconds since the epoch."""
    seconds, rest = np.divmod(micros, 1_000_000)
    nanos = rest * 1000
    has_s, has_n = seconds != 0, nanos != 0
    return _concat(
        _const(b"\x08", has_s), _varint(seconds, has_s), _const(b"\x10", has_n), _varint(nanos, has_n)
    )


def sqlite_epochs(micros: np.ndarray) -> list[int]:
    """What Feast's sqlite adapter stores for each timestamp: int(naive UTC datetime.timestamp())."""
    uniques, inverse = np.unique(micros, return_inverse=True)
    # Feast passes a naive UTC datetime, which datetime.timestamp() reads in the machine's local zone.
    seconds = [int((_EPOCH + timedelta(microseconds=int(u))).timestamp()) for u in uniques.tolist()]
    return np.asarray(seconds, np.int64)[inverse.reshape(-1)].tolist()


# ----------------------------------------------------------------------------- the view's plan


@dataclass(frozen=True)
class Feature:
    """A feature of the view: name, Feast value type name (e.g. FLOAT_LIST) and declared vector_length."""

    name: str
    vtype: str
    vector_length: int = 0

    @property
    def is_vector(self) -> bool:
        """A float array: checked for finiteness and, unless ragged, length."""
        return self.vtype in _FLOAT_LISTS


@dataclass
class Plan:
    """What write_online needs from the registry, plus the vector lengths settled so far."""

    view: str  # the feature view name
    stored_name: str  # name in the online store (with _v<N> under feature-view versioning)
    project: str
    keys: list[tuple[str, str]]
    features: list[Feature]
    ts_column: str
    created_column: str | None
    key_version: int
    dims: dict[str, tuple[int | None, str]] = field(default_factory=dict)  # feature -> (length, why)

    @property
    def columns(self) -> list[str]:
        """The frame's expected columns."""
        extra = [self.created_column] if self.created_column else []
        return [k for k, _ in self.keys] + [f.name for f in self.features] + [self.ts_column] + extra


def plan_for(store: FeatureStore, feature_view: str, vector_dims: Mapping[str, int | None] | None) -> Plan:
    """Read the view's schema from the store's registry."""
    from feast.infra.online_stores.helpers import compute_versioned_name

    view = _feature_view(store, feature_view)
    features = [Feature(f.name, f.dtype.to_value_type().name, f.vector_length or 0) for f in view.features]
    source = view.batch_source
    plan = Plan(
        view=view.name,
        stored_name=compute_versioned_name(view, store.config.registry.enable_online_feature_view_versioning),
        project=store.project,
        keys=[(c.name, c.dtype.to_value_type().name) for c in view.entity_columns],
        features=features,
        ts_column=source.timestamp_field if source is not None else "event_timestamp",
        created_column=(source.created_timestamp_column or None) if source is not None else None,
        key_version=store.config.entity_key_serialization_version,
    )
    plan.dims.update(_declared_dims(plan, features, dict(vector_dims or {})))
    return plan


def _feature_view(store: FeatureStore, name: str) -> FeatureView:
    """The registry's feature view, or an error listing the views there are."""
    from feast.errors import FeatureViewNotFoundException

    try:
        return store.get_feature_view(name)
    except FeatureViewNotFoundException as exc:
        known = sorted(v.name for v in store.list_feature_views())
        raise OnlineWriteError(
            f"feature view {name!r} is not in project {store.project!r} (known: {known}); "
            "run `feast apply` (or FeatureStore.apply) with its definition first."
        ) from exc


def _declared_dims(
    plan: Plan, features: list[Feature], given: dict[str, int | None]
) -> dict[str, tuple[int | None, str]]:
    """Vector lengths fixed up front: from vector_dims, else the field's vector_length."""
    vectors = {f.name: f for f in features if f.is_vector}
    unknown = sorted(set(given) - set(vectors))
    if unknown:
        raise OnlineWriteError(
            f"vector_dims names {unknown}, which are not float-array features of {plan.view!r} "
            f"(those are {sorted(vectors)})."
        )
    dims: dict[str, tuple[int | None, str]] = {n: (d, "vector_dims argument") for n, d in given.items()}
    for name, feat in vectors.items():
        if name not in dims and feat.vector_length > 0:
            dims[name] = (feat.vector_length, "vector_length of the field")
    return dims


# ----------------------------------------------------------------------------- validation


@dataclass
class Problems:
    """Refused rows grouped by reason: reason -> (first MAX_IDS entity ids, count)."""

    key_names: list[str]
    found: dict[str, tuple[list[Any], int]] = field(default_factory=dict)

    def add(self, reason: str, frame: pd.DataFrame, rows: np.ndarray) -> None:
        """Record the rows (bool mask over frame) refused for `reason`."""
        count = int(rows.sum())
        if not count:
            return
        ids, seen = self.found.get(reason, ([], 0))
        room = MAX_IDS - len(ids)
        if room > 0:
            chosen = frame.loc[rows, self.key_names].head(room)
            ids = ids + [_entity_id(r) for r in chosen.itertuples(index=False, name=None)]
        self.found[reason] = (ids, seen + count)

    def raise_if_any(self, view: str, written: int) -> None:
        """Raise one OnlineWriteError describing every reason."""
        if not self.found:
            return
        total = sum(c for _, c in self.found.values())
        keys = ", ".join(self.key_names)
        lines = [
            f"  - {reason}: {count} row(s); {keys}: {ids}"
            + (f" (first {MAX_IDS})" if count > len(ids) else "")
            for reason, (ids, count) in self.found.items()
        ]
        raise OnlineWriteError(
            f"{view}: refused {total} row(s), {_written_state(written)}:\n" + "\n".join(lines) + "\n"
            "Fix or drop these rows and write again (writes are upserts, so rerunning is safe).",
            self.found,
        )


def _entity_id(values: tuple[Any, ...]) -> Any:
    """One entity's id: the key value, or a tuple for composite keys (numpy scalars made plain)."""
    plain = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
    return plain[0] if len(plain) == 1 else plain


def column_problem(frame: pd.DataFrame, plan: Plan) -> str | None:
    """What is wrong with the frame's columns (not exactly the view's keys, features, timestamps), if any."""
    expected = plan.columns
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        return (
            f"{plan.view}: the frame is missing columns {missing} and has unexpected columns {extra}; "
            f"it must have exactly {expected} (rename or drop columns)"
        )
    ts = frame[plan.ts_column].dtype
    if not isinstance(ts, pd.DatetimeTZDtype):
        return (
            f"{plan.view}: column {plan.ts_column!r} has dtype {ts}; it must be tz-aware "
            "(e.g. pd.to_datetime(values, utc=True) or .dt.tz_localize('UTC'))"
        )
    return None


def _written_state(written: int) -> str:
    """What an error left in the store."""
    return (
        "nothing was written" if not written else f"this batch was not written ({written} earlier rows were)"
    )


def check_rows(frame: pd.DataFrame, plan: Plan, problems: Problems, duplicates: bool = True) -> None:
    """Record rows with missing keys or timestamps, duplicate keys (if asked), or bad vectors."""
    names = [k for k, _ in plan.keys]
    problems.add("missing entity key", frame, frame[names].isna().any(axis=1).to_numpy())
    if duplicates:
        problems.add("duplicate entity key within the batch", frame, _duplicates(frame, names))
    problems.add(f"missing {plan.ts_column}", frame, frame[plan.ts_column].isna().to_numpy())
    for feat in plan.features:
        if feat.is_vector:
            _check_vector(frame, feat, plan, problems)


def _duplicates(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """Rows whose entity key occurs more than once."""
    return frame.duplicated(subset=names, keep=False).to_numpy()


def _check_vector(frame: pd.DataFrame, feat: Feature, plan: Plan, problems: Problems) -> None:
    """Record missing vectors, vectors with NaN/inf, and vectors of the wrong length."""
    ragged = _flatten(frame[feat.name], _FLOAT_LISTS[feat.vtype])
    problems.add(f"{feat.name} is missing (None)", frame, ~ragged.present)
    bad = ~np.isfinite(ragged.flat)
    sums = np.concatenate([[0], np.cumsum(bad)])
    ends = np.cumsum(ragged.lens)
    problems.add(f"{feat.name} has NaN or inf values", frame, (sums[ends] - sums[ends - ragged.lens]) > 0)
    if feat.name not in plan.dims and ragged.present.any():
        first = int(np.argmax(ragged.present))
        who = _entity_id(tuple(frame.iloc[first][[k for k, _ in plan.keys]]))
        why = (
            f"inferred from the first row ({who}); pass vector_dims={{{feat.name!r}: D}} to fix it "
            "or None for variable length"
        )
        plan.dims[feat.name] = (int(ragged.lens[first]), why)
    length, why = plan.dims.get(feat.name, (None, ""))
    if length is not None:
        problems.add(
            f"{feat.name} length is not {length} ({why})", frame, ragged.present & (ragged.lens != length)
        )


# ----------------------------------------------------------------------------- a batch encoded


@dataclass
class Batch:
    """A validated batch in Feast's bytes: entity keys, each feature's values, and its timestamps."""

    n: int
    keys: Rows
    features: dict[str, Encoded]
    micros: np.ndarray  # event timestamps, UTC microseconds since the epoch
    created_micros: np.ndarray | None


def encode_batch(frame: pd.DataFrame, plan: Plan) -> Batch:
    """Encode a validated frame."""
    return Batch(
        n=len(frame),
        keys=encode_entity_keys(frame, plan.keys, plan.key_version),
        features={f.name: encode_values(frame[f.name], f.vtype) for f in plan.features},
        micros=_micros(frame[plan.ts_column]),
        created_micros=_micros(frame[plan.created_column]) if plan.created_column else None,
    )


def _micros(series: pd.Series) -> np.ndarray:
    """UTC microseconds since the epoch, truncated like datetime (Feast converts via to_pydatetime)."""
    utc = series.dt.tz_convert("UTC") if isinstance(series.dtype, pd.DatetimeTZDtype) else series
    return utc.to_numpy(dtype="datetime64[ns]").astype("datetime64[us]").astype(np.int64)


# ----------------------------------------------------------------------------- store writers


class SqliteWriter:
    """Feast's SQLite online table: its upsert, executemany, one transaction per batch.

    Rows go in sorted by (entity_key, feature_name), so each B-tree page is visited once per batch
    (Feast inserts in input order). A statement carries many entities; an entity's key and timestamps
    are bound once and shared by its feature rows (numbered parameters), and values that are NULL for
    the whole batch are SQL literals: the stored rows are the same, with a third of the bindings.
    """

    def __init__(self, store: FeatureStore, plan: Plan) -> None:
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        self.table = f"{plan.project}_{plan.stored_name}"  # as Feast's helpers.compute_table_id
        self.path = SqliteOnlineStore._get_db_path(store.config)
        self.conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)  # used by OneAhead
        self.conn.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
        wants_num = bool(getattr(store.config.online_store, "enable_openai_compatible_store", False))
        self.with_num = wants_num and "value_num" in self._columns()
        self.plan = plan

    def _columns(self) -> set[str]:
        """The table's columns, or an error if `feast apply` has not created it."""
        columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({_quote(self.table)})")}
        if not columns:
            raise OnlineWriteError(
                f"table {self.table!r} does not exist in {self.path}; run `feast apply` "
                "(or FeatureStore.apply) with this feature view first."
            )
        return columns

    def prepare(self, frame: pd.DataFrame) -> list[tuple[str, list[list[Any]]]]:
        """(statement, parameter lists) pairs that upsert a validated frame."""
        batch = encode_batch(frame, self.plan)
        keys = _split(batch.keys)
        order = np.array(sorted(range(batch.n), key=keys.__getitem__), dtype=np.int64)
        params: list[np.ndarray] = []  # per-entity parameter columns, entities in key order

        def bind(values: list[Any]) -> int:
            params.append(_objects(values)[order])
            return len(params) - 1

        def bind_unless_null(values: list[Any]) -> int | str:
            return bind(values) if any(v is not None for v in values) else "NULL"

        key, event_ts = bind(keys), bind(sqlite_epochs(batch.micros))
        created = bind(sqlite_epochs(batch.created_micros)) if batch.created_micros is not None else "NULL"
        rows: list[list[int | str]] = []  # per feature: each column as a parameter slot or an SQL literal
        for name in sorted(batch.features):
            enc = batch.features[name]
            row: list[int | str] = [
                key,
                _literal(name),
                bind(_split(enc.values)),
                bind_unless_null(enc.texts),
            ]
            rows.append(row + ([bind_unless_null(enc.nums)] if self.with_num else []) + [event_ts, created])
        return self._statements(np.stack(params, axis=1), rows)

    def _statements(
        self, table: np.ndarray, rows: list[list[int | str]]
    ) -> list[tuple[str, list[list[Any]]]]:
        """Chunks of entities per statement: (n, P) parameters -> full chunks, then the rest."""
        n, width = table.shape
        per = max(1, min(_SQLITE_ENTITIES_PER_STATEMENT, _SQLITE_MAX_PARAMS // width))
        full = n // per * per
        out = []
        if full:
            out.append((self._sql(rows, width, per), table[:full].reshape(-1, per * width).tolist()))
        if full < n:
            out.append((self._sql(rows, width, n - full), [table[full:].reshape(-1).tolist()]))
        return out

    def _sql(self, rows: list[list[int | str]], width: int, entities: int) -> str:
        """Feast's upsert with the rows of `entities` entities (numbered parameters, `width` per entity)."""
        values = ", ".join(
            "(" + ", ".join(f"?{e * width + c + 1}" if isinstance(c, int) else c for c in row) + ")"
            for e in range(entities)
            for row in rows
        )
        return _upsert_sql(self.table, self.with_num, values)

    def write(self, statements: list[tuple[str, list[list[Any]]]]) -> None:
        """Upsert every (entity, feature) row of one batch in one transaction."""
        with self.conn:
            for sql, params in statements:
                self.conn.executemany(sql, params)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def _quote(identifier: str) -> str:
    """A quoted SQLite identifier (as Feast's sqlite._quote_id)."""
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _upsert_sql(table: str, with_num: bool, values: str) -> str:
    """Feast's sqlite online_write_batch upsert statement, with the given VALUES rows."""
    columns = ["entity_key", "feature_name", "value", "value_text"] + (["value_num"] if with_num else [])
    columns += ["event_ts", "created_ts"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
    return (
        f"INSERT INTO {_quote(table)} ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates};"
    )


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-D object array of the items (bytes stay whole)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class RedisWriter:
    """Feast's Redis layout: one hash per entity, HSET of every feature and `_ts:<view>`, optional EXPIRE."""

    def __init__(self, store: FeatureStore, plan: Plan) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import RedisOnlineStore
        from redis.cluster import RedisCluster

        config = store.config.online_store
        self.client = RedisOnlineStore()._get_client(config)
        self.ttl = config.key_ttl_seconds or None
        self.project = plan.project.encode()
        self.fields = {f.name: _mmh3(f"{plan.stored_name}:{f.name}") for f in plan.features}
        self.ts_field = f"_ts:{plan.stored_name}".encode()
        self.cluster = isinstance(self.client, RedisCluster)
        self.plan = plan

    def prepare(self, frame: pd.DataFrame) -> Any:
        """A validated frame as raw RESP (or as (key, mapping) pairs for Redis Cluster)."""
        batch = encode_batch(frame, self.plan)
        keys = _concat(batch.keys, _const(self.project, np.ones(batch.n, bool)))
        pairs = [(self.fields[name], enc.values) for name, enc in batch.features.items()]
        pairs.append((self.ts_field, encode_timestamps(batch.micros)))
        if self.cluster:
            columns = [(name, _split(rows)) for name, rows in pairs]
            return [
                (key, {name: values[i] for name, values in columns}) for i, key in enumerate(_split(keys))
            ]
        return _resp_hset(keys, pairs, self.ttl), batch.n * (2 if self.ttl else 1)

    def write(self, payload: Any) -> None:
        """Send one prepared batch and check every reply."""
        if self.cluster:
            self._write_pipeline(payload)
        else:
            self._write_raw(*payload)

    def _write_raw(self, payload: bytes, replies: int) -> None:
        """Pipelined raw RESP on one pooled connection; an error reply raises."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=True)
            for _ in range(replies):
                conn.read_response()
        except BaseException:
            conn.disconnect()  # unread replies must not reach the next user of this connection
            raise
        finally:
            pool.release(conn)

    def _write_pipeline(self, hashes: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """redis-py pipeline (Redis Cluster: keys live on different nodes)."""
        with self.client.pipeline(transaction=False) as pipe:
            for key, mapping in hashes:
                pipe.hset(key, mapping=mapping)
                if self.ttl:
                    pipe.expire(key, self.ttl)
            pipe.execute()

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _resp_hset(keys: Rows, pairs: list[tuple[bytes, Rows]], ttl: int | None) -> bytes:
    """RESP of `HSET key f1 v1 ... [EXPIRE key ttl]` for every row."""
    n = len(keys[1])
    every = np.ones(n, bool)
    key = _resp_bulk(keys)
    parts = [_const(f"*{2 + 2 * len(pairs)}\r\n$4\r\nHSET\r\n".encode(), every), key]
    for name, values in pairs:
        parts += [_const(b"$%d\r\n%s\r\n" % (len(name), name), every), _resp_bulk(values)]
    if ttl:
        seconds = str(int(ttl)).encode()
        parts += [_const(b"*3\r\n$6\r\nEXPIRE\r\n", every), key]
        parts.append(_const(b"$%d\r\n%s\r\n" % (len(seconds), seconds), every))
    return _concat(*parts)[0].tobytes()


def _resp_bulk(rows: Rows) -> Rows:
    """RESP bulk string of each row: `$<len>\\r\\n<bytes>\\r\\n`."""
    every = np.ones(len(rows[1]), bool)
    return _concat(
        _const(b"$", every), _decimal(rows[1]), _const(b"\r\n", every), rows, _const(b"\r\n", every)
    )


class FeastWriter:
    """Any other online store (or SQLite with vector search on): FeatureStore.write_to_online_store."""

    def __init__(self, store: FeatureStore, plan: Plan) -> None:
        self.store, self.view = store, plan.view

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Feast converts the frame itself."""
        return frame

    def write(self, frame: pd.DataFrame) -> None:
        """Hand the validated frame to Feast."""
        self.store.write_to_online_store(self.view, frame)

    def close(self) -> None:
        """Nothing to release."""


def _is_sqlite(store: FeatureStore) -> bool:
    """Whether the online store is Feast's SQLite store."""
    kind = getattr(store.config.online_store, "type", "")
    return kind == "sqlite" or kind.endswith("SqliteOnlineStore")


def open_writer(store: FeatureStore, plan: Plan) -> SqliteWriter | RedisWriter | FeastWriter:
    """The fast writer for the store's online store type, else Feast's own."""
    online = store.config.online_store
    kind = getattr(online, "type", "")
    if _is_sqlite(store):
        if getattr(online, "vector_enabled", False):
            log.warning("sqlite online store has vector_enabled; writing through Feast (slow path)")
            return FeastWriter(store, plan)
        return SqliteWriter(store, plan)
    if kind == "redis" or kind.endswith("RedisOnlineStore"):
        return RedisWriter(store, plan)
    log.info("online store %r has no fast path; writing through FeatureStore.write_to_online_store", kind)
    return FeastWriter(store, plan)


# ----------------------------------------------------------------------------- the public entry point


def write_online(
    store: FeatureStore,
    feature_view: str,
    frame: Frames,
    batch_rows: int = 50_000,
    progress: bool = True,
    vector_dims: Mapping[str, int | None] | None = None,
) -> int:
    """Upsert rows into the online store as Feast would store them; return the number of rows written.

    `frame` (a DataFrame, or an iterable of DataFrames to stream) has exactly the view's join keys,
    features and tz-aware timestamp column(s), one row per entity. A DataFrame is validated whole before
    anything is written; a stream batch by batch, each before its write (an error then says how many
    earlier rows were written). Float-array features must be present, finite and of one length:
    `vector_dims[name]` (None = any length), else the field's vector_length, else the length of the first
    row seen. Rows always overwrite what is stored; rerunning with the same rows leaves the store
    identical. Raises OnlineWriteError naming the refused entities (first 20 and the count).
    """
    if batch_rows < 1:
        raise OnlineWriteError(f"batch_rows = {batch_rows} must be at least 1.")
    plan = plan_for(store, feature_view, vector_dims)
    started = time.perf_counter()
    if isinstance(frame, pd.DataFrame):
        _validate_whole(frame, plan, batch_rows)
        order = key_order(frame, plan.keys, plan.key_version) if _is_sqlite(store) else None
        written = _write_all(store, plan, _slices(frame, batch_rows, order), progress, total=len(frame))
    else:
        parts = chain.from_iterable(_slices(f, batch_rows) for f in frame)
        written = _write_all(store, plan, parts, progress, total=None)
    _refresh_precomputed(store, plan.view)
    seconds = time.perf_counter() - started
    log.info(
        "%s: wrote %d rows in %.1f s (%.0f rows/s)", plan.view, written, seconds, written / max(seconds, 1e-9)
    )
    return written


def _slices(frame: pd.DataFrame, batch_rows: int, order: np.ndarray | None = None) -> Iterator[pd.DataFrame]:
    """Consecutive row slices of at most batch_rows (taken in `order` if given)."""
    for start in range(0, len(frame), batch_rows):
        yield (
            frame.iloc[start : start + batch_rows]
            if order is None
            else frame.iloc[order[start : start + batch_rows]]
        )


def key_order(frame: pd.DataFrame, keys: list[tuple[str, str]], version: int = 3) -> np.ndarray:
    """Row positions that sort the frame by its serialized entity keys (the online table's key order)."""
    buf, lens = encode_entity_keys(frame[[k for k, _ in keys]], keys, version)
    if len(lens) and lens.min() == lens.max():
        fixed = np.ascontiguousarray(buf).view(f"S{int(lens[0])}")  # equal lengths: bytes order = memcmp
        return np.argsort(fixed, kind="stable")
    serialized = _split((buf, lens))
    return np.array(sorted(range(len(serialized)), key=serialized.__getitem__), dtype=np.int64)


def in_key_order(store: FeatureStore, feature_view: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's rows in the order of Feast's serialized entity keys of the view.

    Feast serializes int64 ids little-endian, so ascending ids are scattered over the SQLite index; a
    stream of batches in this order fills it front to back, about 3x faster at 1M rows. `frame` needs
    only the join-key columns (e.g. order the item ids before computing and streaming their rows).
    DataFrames given whole to write_online are put in this order automatically.
    """
    plan = plan_for(store, feature_view, None)
    return frame.iloc[key_order(frame, plan.keys, plan.key_version)]


def _validate_whole(frame: pd.DataFrame, plan: Plan, batch_rows: int) -> None:
    """Check every row of a DataFrame (slice by slice, to bound memory) before anything is written."""
    problem = column_problem(frame, plan)
    if problem:
        raise OnlineWriteError(f"{problem}; {_written_state(0)}.")
    problems = Problems([k for k, _ in plan.keys])
    names = [k for k, _ in plan.keys]
    problems.add("duplicate entity key within the frame", frame, _duplicates(frame, names))
    for part in _slices(frame, batch_rows):
        check_rows(part.reset_index(drop=True), plan, problems, duplicates=False)
    problems.raise_if_any(plan.view, written=0)


def _write_all(
    store: FeatureStore, plan: Plan, parts: Iterable[pd.DataFrame], progress: bool, total: int | None
) -> int:
    """Validate (streams), encode and write each batch; return the rows written."""
    from tqdm import tqdm

    writer = open_writer(store, plan)
    with tqdm(total=total, unit="rows", desc=plan.view, disable=not progress) as bar:
        ahead = OneAhead(bar.update)
        try:
            for part in parts:
                part = part.reset_index(drop=True)
                if total is None:
                    _validate_batch(part, plan, ahead)
                ahead.submit(writer.write, writer.prepare(part), len(part))
            return ahead.settle()
        finally:
            ahead.close()
            writer.close()


class OneAhead:
    """Writes on one background thread, one batch at a time, while the caller encodes the next batch.

    SQLite's engine and socket sends release the GIL, so encoding and writing overlap; at most one
    batch is in flight, so memory stays at about two batches.
    """

    def __init__(self, on_done: Callable[[int], object]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-writer")
        self.pending: tuple[Future[None], int] | None = None
        self.written = 0
        self.on_done = on_done

    def submit(self, write: Callable[[Any], None], payload: Any, rows: int) -> None:
        """Start writing payload once the previous write has finished."""
        self.settle()
        self.pending = (self.pool.submit(write, payload), rows)

    def settle(self) -> int:
        """Wait for the write in flight (its error is raised here); return the rows written so far."""
        if self.pending is not None:
            future, rows = self.pending
            self.pending = None
            future.result()
            self.written += rows
            self.on_done(rows)
        return self.written

    def close(self) -> None:
        """Finish the write in flight and stop the thread."""
        try:
            self.settle()
        finally:
            self.pool.shutdown()


def _validate_batch(part: pd.DataFrame, plan: Plan, ahead: OneAhead) -> None:
    """Check one streamed batch before it is written (the error counts the rows already written)."""
    problem = column_problem(part, plan)
    if problem:
        raise OnlineWriteError(f"{problem}; {_written_state(ahead.settle())}.")
    problems = Problems([k for k, _ in plan.keys])
    check_rows(part, plan, problems)
    if problems.found:
        problems.raise_if_any(plan.view, ahead.settle())


def _refresh_precomputed(store: FeatureStore, view: str) -> None:
    """Rebuild Feast's precomputed vectors of feature services that read this view, as materialize does."""
    for service in store.list_feature_services():
        if getattr(service, "precompute_online", False) and view in {
            p.name for p in service.feature_view_projections
        }:
            store.precompute_feature_service(service.name)
