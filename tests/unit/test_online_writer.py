"""The online writer's numpy encoders produce exactly the bytes Feast's own converters produce."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from specrec.nearline import online_writer as ow

BIG = 2**62 + 12345


def feast_bytes(series: pd.Series, vtype: str) -> tuple[list[bytes], list[object]]:
    """What Feast's write path stores for a column: Value bytes and the SQLite value_text."""
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    # FeatureStore.write_to_online_store: pa.Table.from_pandas, then column.to_numpy (feast.utils).
    column = pa.Table.from_pandas(series.to_frame(), preserve_index=False).column(0)
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), ValueType[vtype])
    return [p.SerializeToString() for p in protos], [extract_text_and_num(p, False)[0] for p in protos]


def arrays(*rows: object, dtype: str | None = None) -> pd.Series:
    """An object column of numpy arrays (None stays None)."""
    return pd.Series([None if r is None else np.asarray(r, dtype=dtype) for r in rows], dtype=object)


CASES = {
    "int64": (pd.Series([0, 1, -1, 127, 128, 300, -(2**63), 2**63 - 1, BIG], dtype="int64"), "INT64"),
    "int64 from float with NaN": (pd.Series([1.0, np.nan, -7.0, 2.0**40]), "INT64"),
    "int64 nullable": (pd.Series([5, None, -3], dtype="Int64"), "INT64"),
    "int32": (pd.Series([0, -1, 2**31 - 1, -(2**31), 1000], dtype="int32"), "INT32"),
    "float32": (pd.Series(np.float32([0.0, -0.0, 0.1, 1e-30, 3.4e38, np.inf, np.nan, -2.5])), "FLOAT"),
    "float from float64": (pd.Series([0.1, 1 / 3, 1e-8, -123456.789]), "FLOAT"),
    "float from int": (pd.Series([0, 3, -4], dtype="int64"), "FLOAT"),
    "double": (pd.Series([0.1, 1 / 3, np.nan, -1e300, 0.0]), "DOUBLE"),
    "bool": (pd.Series([True, False, True]), "BOOL"),
    "string": (pd.Series(["b1", "", "ünïcødé ✓", "x" * 200, None, "b1"], dtype=object), "STRING"),
    "string from ints": (pd.Series([1, -2, 30], dtype="int64"), "STRING"),
    "string dtype": (pd.Series(["a", None, "bc"], dtype="string"), "STRING"),
    "timestamp tz": (
        pd.Series(
            pd.to_datetime(
                ["2024-01-02 03:04:05.9", "1969-12-31 23:59:59.5", None], utc=True, format="ISO8601"
            )
        ),
        "UNIX_TIMESTAMP",
    ),
    "timestamp naive": (
        pd.Series(pd.to_datetime(["2024-01-02 03:04:05", "1970-01-01 00:00:00"], format="ISO8601")),
        "UNIX_TIMESTAMP",
    ),
    "timestamp int seconds": (pd.Series([0, 1_700_000_000, -5], dtype="int64"), "UNIX_TIMESTAMP"),
    "int64 list": (arrays([1, 2, 3], [], None, [-1, BIG, 0, 300], [127, 128], dtype="int64"), "INT64_LIST"),
    "int64 list of python lists": (pd.Series([[1, 2], [], [2**40]], dtype=object), "INT64_LIST"),
    "int32 list": (arrays([1, -2], [2**31 - 1], [], dtype="int32"), "INT32_LIST"),
    "float32 list": (
        arrays([0.5, -1.25, 3e-7], [], None, np.linspace(-1, 1, 300), dtype="float32"),
        "FLOAT_LIST",
    ),
    "float list from float64": (arrays([0.1, 1 / 3], [1e-9] * 8, dtype="float64"), "FLOAT_LIST"),
    "float list of python lists": (pd.Series([[0.1, 0.2], [1.0]], dtype=object), "FLOAT_LIST"),
    "double list": (arrays([0.1, 1 / 3], [], [np.pi] * 40, dtype="float64"), "DOUBLE_LIST"),
    "string list (Feast's converter)": (
        pd.Series([["a", "bc"], [], None, ["ü"]], dtype=object),
        "STRING_LIST",
    ),
    "bytes (Feast's converter)": (pd.Series([b"\x00\x01", b"", None], dtype=object), "BYTES"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_are_feast_bytes(case: str) -> None:
    series, vtype = CASES[case]
    expected, texts = feast_bytes(series, vtype)
    encoded = ow.encode_values(series, vtype)
    assert ow._split(encoded.values) == expected
    assert encoded.texts == texts


def test_float_texts_match_feast_str() -> None:
    values = pd.Series(np.float32([0.1, 1e-30, 3.4e38, 7.0]))
    assert ow.encode_values(values, "FLOAT").texts == [str(float(v)) for v in values]


def entity_key_bytes(frame: pd.DataFrame, keys: list[tuple[str, str]]) -> list[bytes]:
    """Feast: EntityKey protos built as feast.utils._build_entity_keys, then serialize_entity_key."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = [python_values_to_proto_values(table.column(k).to_numpy(), ValueType[t]) for k, t in keys]
    names = [k for k, _ in keys]
    return [
        serialize_entity_key(EntityKey(join_keys=names, entity_values=v), 3) for v in zip(*cols, strict=True)
    ]


@pytest.mark.parametrize(
    "keys",
    [
        [("item_id", "INT64")],
        [("item_id", "INT64"), ("bundle_id", "STRING")],  # sorted by name inside the key: bundle_id first
        [("user_id", "INT32"), ("bundle_id", "STRING")],
        [("name", "STRING")],
    ],
)
def test_entity_keys_are_feast_bytes(keys: list[tuple[str, str]]) -> None:
    data = {
        "item_id": np.array([0, 1, -1, BIG, 256], dtype="int64"),
        "user_id": np.array([0, 1, -1, 2**31 - 1, 256], dtype="int32"),
        "bundle_id": ["b-2024", "b-2024", "é", "", "b2"],
        "name": ["x", "yy", "zzz", "ü", ""],
    }
    frame = pd.DataFrame({k: data[k] for k, _ in keys})
    assert ow._split(ow.encode_entity_keys(frame, keys)) == entity_key_bytes(frame, keys)


@pytest.mark.parametrize(
    "keys", [[("item_id", "INT64")], [("item_id", "INT64"), ("bundle_id", "STRING")], [("name", "STRING")]]
)
def test_key_order_is_the_serialized_key_order(keys: list[tuple[str, str]]) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "item_id": rng.integers(-(2**40), 2**40, 500),
            "bundle_id": rng.choice(["b1", "b2", "bundle-3"], 500),
            "name": [str(x) for x in rng.integers(0, 10**6, 500)],  # ragged lengths
        }
    )
    serialized = entity_key_bytes(frame[[k for k, _ in keys]], keys)
    order = ow.key_order(frame, keys)
    assert [serialized[i] for i in order] == sorted(serialized)


def test_entity_keys_of_other_types_use_feast() -> None:
    frame = pd.DataFrame({"code": [b"\x01", b"\x02\x03"]})
    assert ow._split(ow.encode_entity_keys(frame, [("code", "BYTES")])) == entity_key_bytes(
        frame, [("code", "BYTES")]
    )


@pytest.mark.filterwarnings("ignore:Discarding nonzero nanoseconds")  # Feast truncates the same way
def test_timestamps_are_protobuf_timestamps() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    times = pd.Series(
        pd.to_datetime(
            [
                "1970-01-01 00:00:00",
                "2024-01-02 03:04:05.123456789",
                "1969-07-20 20:17:40.5",
                "2038-01-19 00:00:00",
            ],
            utc=True,
            format="ISO8601",
        )
    )
    expected = []
    for t in times:
        proto = Timestamp()
        proto.FromDatetime(t.to_pydatetime())  # Feast: _coerce_datetime -> to_pydatetime (microseconds)
        expected.append(proto.SerializeToString())
    assert ow._split(ow.encode_timestamps(ow._micros(times))) == expected


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_sqlite_epochs_match_feasts_adapter(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feast's sqlite adapter stores int(naive_utc.timestamp()), which reads the naive time as local."""
    from feast.utils import to_naive_utc

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        times = pd.Series(
            pd.to_datetime(
                ["2024-03-10 07:30:00.75", "2024-07-01 00:00:00", "1999-12-31 23:59:59"],
                utc=True,
                format="ISO8601",
            )
        )
        expected = [int(to_naive_utc(t.to_pydatetime()).timestamp()) for t in times]
        assert ow.sqlite_epochs(ow._micros(times)) == expected
    finally:
        monkeypatch.undo()
        time.tzset()


def test_concat_matches_python_join(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ragged row-wise concatenation, with the scatter chunk forced small so every path runs."""
    monkeypatch.setattr(ow, "_SCATTER_BYTES", 7)
    rng = np.random.default_rng(0)
    parts = [[os.urandom(int(k)) for k in rng.integers(0, 20, 50)] for _ in range(3)]
    parts.append([b"\x00" * 5] * 50)  # a fixed-width part among ragged ones
    joined = ow._concat(*(ow._from_list(p) for p in parts))
    assert ow._split(joined) == [b"".join(row) for row in zip(*parts, strict=True)]


def test_varints_and_decimals() -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    values = np.array([0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, -1, -(2**63)], dtype=np.int64)
    got = ow._split(ow._varint_bytes(values))
    assert got == [_VarintBytes(int(v) & (2**64 - 1)) for v in values]
    lens = np.array([0, 7, 10, 99, 100, 123456789], dtype=np.int64)
    assert ow._split(ow._decimal(lens)) == [str(v).encode() for v in lens]


def test_resp_matches_redis_py() -> None:
    from redis.connection import Connection

    keys = ow._from_list([b"k1\x00", b"key-two"])
    pairs = [
        (b"\x01\x02\x03\x04", ow._from_list([b"", b"v" * 300])),
        (b"_ts:fv", ow._from_list([b"a", b"b"])),
    ]
    conn = Connection()
    expected = b""
    for i, key in enumerate([b"k1\x00", b"key-two"]):
        args = [b"HSET", key] + [x for name, rows in pairs for x in (name, ow._split(rows)[i])]
        expected += b"".join(conn.pack_command(*args)) + b"".join(conn.pack_command(b"EXPIRE", key, b"60"))
    assert ow._resp_hset(keys, pairs, ttl=60) == expected


def test_error_names_entities_and_count() -> None:
    frame = pd.DataFrame({"item_id": np.arange(30), "bundle_id": ["b"] * 30})
    problems = ow.Problems(["item_id", "bundle_id"])
    problems.add("embedding has NaN or inf values", frame, np.arange(30) >= 5)
    with pytest.raises(ow.OnlineWriteError) as err:
        problems.raise_if_any("item_repr", written=0)
    message = str(err.value)
    assert "25 row(s)" in message and "(5, 'b')" in message and f"(first {ow.MAX_IDS})" in message
    assert "nothing was written" in message and isinstance(err.value, ValueError)
    assert err.value.problems["embedding has NaN or inf values"][1] == 25
