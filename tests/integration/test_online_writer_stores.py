"""write_online on real Feast stores: byte-identical to Feast's own writes, read back by plain Feast clients.

Each test writes a tiny feature repo (feature_store.yaml + definitions.py) into a temp folder and applies
it with FeatureStore.apply. The Redis tests start their own redis-server on loopback.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from specrec.nearline.online_writer import OnlineWriteError, in_key_order, write_online
from tests.conftest import require

pytestmark = pytest.mark.integration

DIM = 8
FEATURES = ["embedding", "semantic_id", "title", "score", "bundle_id"]
DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
item_repr = FeatureView(
    name="item_repr",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="embedding", dtype=Array(Float32)),  # dim 8, not declared: taken from the first row
        Field(name="semantic_id", dtype=Array(Int64)),
        Field(name="title", dtype=String),
        Field(name="score", dtype=Float32),
        Field(name="bundle_id", dtype=String),
    ],
    source=FileSource(name="item_repr_history", path="item_repr.parquet", timestamp_field="event_timestamp"),
)
"""


def make_store(root: Path, online: str) -> Any:
    """A Feast repo in `root` with the given online_store yaml block, applied."""
    from feast import FeatureStore

    root.mkdir(parents=True)
    (root / "feature_store.yaml").write_text(
        f"project: owtest\nprovider: local\nregistry: {root / 'registry.db'}\n{online}"
        "entity_key_serialization_version: 3\n"
    )
    (root / "definitions.py").write_text(DEFINITIONS)
    spec = importlib.util.spec_from_file_location(f"defs_{root.name}", root / "definitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = FeatureStore(repo_path=str(root))
    store.apply([module.item, module.item_repr])
    return store


def sqlite_store(root: Path) -> Any:
    """A repo on the SQLite online store."""
    return make_store(root, f"online_store:\n  type: sqlite\n  path: {root / 'online.db'}\n")


def items(n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """n synthetic items (ids spread over the int64 range, negative ones included)."""
    rng = np.random.default_rng(seed)
    ids = (np.arange(start, start + n, dtype=np.int64) - 3) * 1_000_003
    return pd.DataFrame(
        {
            "item_id": ids,
            "embedding": list(rng.standard_normal((n, DIM)).astype(np.float32)),
            "semantic_id": [rng.integers(0, 300, int(k)) for k in rng.integers(0, 4, n)],
            "title": [f"item {i} ✓" if i % 5 else None for i in range(start, start + n)],
            "score": rng.standard_normal(n).astype(np.float32),
            "bundle_id": "bundle-2024-01-02",
            "event_timestamp": pd.Timestamp("2024-01-02 03:04:05.678901", tz="UTC")
            + pd.to_timedelta(np.arange(n), "s"),
        }
    )


def table_dump(store: Any) -> list[tuple[Any, ...]]:
    """Every row of the view's SQLite table, as stored."""
    path = Path(store.repo_path) / "online.db"
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
            "FROM owtest_item_repr ORDER BY entity_key, feature_name"
        ).fetchall()


def assert_reads_back(store: Any, frame: pd.DataFrame) -> None:
    """A plain get_online_features returns exactly the frame (float32 compared bit for bit)."""
    refs = [f"item_repr:{f}" for f in FEATURES]
    got = store.get_online_features(refs, [{"item_id": int(i)} for i in frame.item_id]).to_dict()
    assert got["item_id"] == frame.item_id.tolist()
    sent = np.stack(frame.embedding.to_numpy()).view(np.uint32)
    assert np.array_equal(np.asarray(got["embedding"], dtype=np.float32).view(np.uint32), sent)
    assert [list(v) for v in got["semantic_id"]] == [v.tolist() for v in frame.semantic_id]
    assert got["title"] == frame.title.tolist()
    assert np.array_equal(
        np.asarray(got["score"], np.float32).view(np.uint32), frame.score.to_numpy().view(np.uint32)
    )
    assert got["bundle_id"] == frame.bundle_id.tolist()


def test_sqlite_rows_are_feasts_and_read_back(tmp_path: Path) -> None:
    frame = items(300)
    ours, feasts = sqlite_store(tmp_path / "ours"), sqlite_store(tmp_path / "feast")
    assert write_online(ours, "item_repr", frame, batch_rows=128, progress=False) == 300
    feasts.write_to_online_store("item_repr", frame)
    assert table_dump(ours) == table_dump(feasts)
    assert len(table_dump(ours)) == 300 * len(FEATURES)
    assert_reads_back(ours, frame)


def test_sqlite_value_num_column_is_feasts(tmp_path: Path) -> None:
    """enable_openai_compatible_store adds Feast's value_num column; it is filled the same way."""
    online = "online_store:\n  type: sqlite\n  path: {}\n  enable_openai_compatible_store: true\n"
    ours = make_store(tmp_path / "ours", online.format(tmp_path / "ours" / "online.db"))
    feasts = make_store(tmp_path / "feast", online.format(tmp_path / "feast" / "online.db"))
    frame = items(40)
    write_online(ours, "item_repr", frame, progress=False)
    feasts.write_to_online_store("item_repr", frame)
    query = (
        "SELECT entity_key, feature_name, value, value_text, value_num FROM owtest_item_repr ORDER BY 1, 2"
    )
    dumps = [
        sqlite3.connect(p / "online.db").execute(query).fetchall()
        for p in (tmp_path / "ours", tmp_path / "feast")
    ]
    assert dumps[0] == dumps[1] and any(row[4] is not None for row in dumps[0])


def test_sqlite_rerun_is_idempotent_and_updates_overwrite(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "repo")
    frame = items(50)
    write_online(store, "item_repr", frame, progress=False)
    first = table_dump(store)
    write_online(store, "item_repr", frame, batch_rows=7, progress=False)
    assert table_dump(store) == first
    newer = items(50, seed=1).assign(event_timestamp=frame.event_timestamp + pd.Timedelta(days=1))
    write_online(store, "item_repr", newer, progress=False)
    assert_reads_back(store, newer)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda v: np.where(np.arange(DIM) == 2, np.nan, v).astype(np.float32), "NaN or inf"),
        (lambda v: np.where(np.arange(DIM) == 0, np.inf, v).astype(np.float32), "NaN or inf"),
        (lambda v: v[:-1], "length is not 8 (inferred from the first row"),
        (lambda v: None, "embedding is missing"),
    ],
    ids=["nan", "inf", "wrong-dim", "missing"],
)
def test_bad_embeddings_are_refused_and_nothing_is_written(tmp_path: Path, damage: Any, reason: str) -> None:
    store = sqlite_store(tmp_path / "repo")
    frame = items(40)
    bad = [5, 17, 39]
    frame["embedding"] = [damage(v) if i in bad else v for i, v in enumerate(frame.embedding)]
    with pytest.raises(OnlineWriteError) as err:
        write_online(store, "item_repr", frame, batch_rows=10, progress=False)
    message = str(err.value)
    assert reason in message and "3 row(s)" in message and "nothing was written" in message
    assert all(str(frame.item_id[i]) in message for i in bad)
    assert table_dump(store) == []


def test_declared_dimension_wins_over_the_first_row(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "repo")
    frame = items(10)
    frame["embedding"] = [v[:4] for v in frame.embedding]  # every row has 4, the view wants 8
    with pytest.raises(OnlineWriteError, match=r"(?s)10 row\(s\).*vector_dims argument"):
        write_online(store, "item_repr", frame, progress=False, vector_dims={"embedding": DIM})
    assert write_online(store, "item_repr", frame, progress=False, vector_dims={"embedding": None}) == 10


def test_columns_duplicates_and_naive_times_are_refused(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "repo")
    frame = items(6)
    with pytest.raises(
        OnlineWriteError, match=r"missing columns \['score'\] and has unexpected columns \['x'\]"
    ):
        write_online(store, "item_repr", frame.drop(columns="score").assign(x=1), progress=False)
    with pytest.raises(OnlineWriteError, match="must be tz-aware"):
        write_online(
            store, "item_repr", frame.assign(event_timestamp=pd.Timestamp("2024-01-01")), progress=False
        )
    twice = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
    with pytest.raises(
        OnlineWriteError, match=rf"duplicate entity key.*2 row\(s\); item_id: \[{frame.item_id[2]}, "
    ):
        write_online(store, "item_repr", twice, progress=False)
    with pytest.raises(OnlineWriteError, match="'nope' is not in project 'owtest'"):
        write_online(store, "nope", frame, progress=False)
    assert table_dump(store) == []


def test_stream_of_frames_is_written_batch_by_batch(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "repo")
    parts = [items(40, start=40 * k, seed=k) for k in range(5)]
    assert write_online(store, "item_repr", iter(parts), batch_rows=16, progress=False) == 200
    assert_reads_back(store, pd.concat(parts, ignore_index=True))

    other = sqlite_store(tmp_path / "other")
    broken = items(40, start=80, seed=2)
    broken.at[3, "embedding"] = np.full(DIM, np.nan, np.float32)

    def stream() -> Iterator[pd.DataFrame]:
        yield from (parts[0], parts[1], broken)

    with pytest.raises(OnlineWriteError, match=r"this batch was not written \(80 earlier rows were\)"):
        write_online(other, "item_repr", stream(), batch_rows=40, progress=False)
    assert len(table_dump(other)) == 80 * len(FEATURES)
    renamed = iter([parts[3], parts[4].rename(columns={"score": "scores"})])
    with pytest.raises(OnlineWriteError, match=r"missing columns \['score'\].*\(40 earlier rows were\)"):
        write_online(other, "item_repr", renamed, progress=False)


def test_in_key_order_is_the_tables_order(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "repo")
    frame = items(64)
    write_online(store, "item_repr", frame, progress=False)
    by_key = table_dump(store)[:: len(FEATURES)]  # one row per entity, in entity_key order
    stored_ids = [int.from_bytes(row[0][-8:], "little", signed=True) for row in by_key]
    assert stored_ids != sorted(stored_ids)  # little-endian keys: not the numeric order
    assert in_key_order(store, "item_repr", frame[["item_id"]]).item_id.tolist() == stored_ids


def test_other_online_stores_go_through_feast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specrec.nearline import online_writer

    store = sqlite_store(tmp_path / "repo")
    monkeypatch.setattr(
        online_writer, "open_writer", lambda store, plan: online_writer.FeastWriter(store, plan)
    )
    frame = items(20)
    assert write_online(store, "item_repr", frame, batch_rows=8, progress=False) == 20
    assert_reads_back(store, frame)


# ----------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A throwaway redis-server on 127.0.0.1 and a free port, stopped after the module."""
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        require(_wait_for_redis(port, proc), f"a redis-server that answers PING on 127.0.0.1:{port}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_for_redis(port: int, proc: subprocess.Popen, seconds: float = 10.0) -> bool:
    """Whether the server answers PING within `seconds`."""
    import redis

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return bool(redis.Redis(port=port).ping())
        except redis.ConnectionError:
            time.sleep(0.05)
    return False


def redis_store(root: Path, port: int, db: int, ttl: int | None = None) -> Any:
    """A repo on the Redis online store (database `db`)."""
    import redis

    redis.Redis(port=port, db=db).flushdb()
    ttl_line = f"  key_ttl_seconds: {ttl}\n" if ttl else ""
    return make_store(
        root, f"online_store:\n  type: redis\n  connection_string: 127.0.0.1:{port},db={db}\n{ttl_line}"
    )


def redis_dump(port: int, db: int) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the database."""
    import redis

    client = redis.Redis(port=port, db=db)
    return {key: client.hgetall(key) for key in client.scan_iter()}


def test_redis_hashes_are_feasts_and_read_back(tmp_path: Path, redis_port: int) -> None:
    import redis

    frame = items(300)
    ours = redis_store(tmp_path / "ours", redis_port, db=0, ttl=3600)
    feasts = redis_store(tmp_path / "feast", redis_port, db=1, ttl=3600)
    assert write_online(ours, "item_repr", frame, batch_rows=128, progress=False) == 300
    feasts.write_to_online_store("item_repr", frame)
    dump = redis_dump(redis_port, 0)
    assert len(dump) == 300 and dump == redis_dump(redis_port, 1)
    assert_reads_back(ours, frame)
    ttls = [redis.Redis(port=redis_port, db=0).ttl(k) for k in list(dump)[:5]]
    assert all(3500 < t <= 3600 for t in ttls)
    write_online(ours, "item_repr", frame, batch_rows=50, progress=False)
    assert redis_dump(redis_port, 0) == dump


def test_redis_cluster_path_writes_the_same_hashes(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redis-py pipeline used for Redis Cluster, run against a plain server."""
    from specrec.nearline import online_writer

    frame = items(60)
    write_online(redis_store(tmp_path / "raw", redis_port, db=3, ttl=600), "item_repr", frame, progress=False)
    init = online_writer.RedisWriter.__init__

    def as_cluster(self: Any, store: Any, plan: Any) -> None:
        init(self, store, plan)
        self.cluster = True

    monkeypatch.setattr(online_writer.RedisWriter, "__init__", as_cluster)
    store = redis_store(tmp_path / "cluster", redis_port, db=4, ttl=600)
    write_online(store, "item_repr", frame, batch_rows=25, progress=False)
    assert redis_dump(redis_port, 4) == redis_dump(redis_port, 3)
    assert_reads_back(store, frame)


def test_redis_refuses_bad_rows_and_streams(tmp_path: Path, redis_port: int) -> None:
    store = redis_store(tmp_path / "repo", redis_port, db=2)
    frame = items(30)
    frame.at[7, "embedding"] = np.full(DIM, np.inf, np.float32)
    with pytest.raises(OnlineWriteError, match=rf"1 row\(s\); item_id: \[{frame.item_id[7]}\]"):
        write_online(store, "item_repr", frame, progress=False)
    assert redis_dump(redis_port, 2) == {}
    parts = [items(25, start=25 * k, seed=k) for k in range(4)]
    assert write_online(store, "item_repr", iter(parts), batch_rows=10, progress=False) == 100
    assert_reads_back(store, pd.concat(parts, ignore_index=True))
