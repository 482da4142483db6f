"""Materialization benchmark: specrec's online writer versus stock `feast materialize`, SQLite and Redis.

For 10k, 100k and 1M synthetic items (64-dim float32 embedding, a semantic-ID Int64 list of length 3 and
a bundle_id string, all at one event time) written to a parquet file, each (store, size, method) runs in
a fresh subprocess on a freshly applied Feast repo:

- specrec: `write_online` over the parquet read in streamed batches (`--batch-rows`), in file order,
- feast: `FeatureStore.materialize(start, end)` with explicit dates over a FileSource on the same parquet
  (stock settings: Feast's local engine, one online write batch).

With `--dask-workers N`, a third method, specrec-dask, writes the same parquet from N Dask worker
processes (a LocalCluster started in the measurement's subprocess; its start-up and the workers' imports
are timed apart, as `dask_cluster_start_s`): contiguous row ranges (specrec.sharding.ranges, as the sharded
flow cuts items), each worker streaming its range through `write_online` into the same store. This is the
online writer on Dask without Prefect's per-task bookkeeping (about 0.1 s a task); its RSS figure is the
driver's only.

Throughput is items per second of wall time for the write alone (repo set-up excluded); peak RSS is the
worker process's own maximum resident set (getrusage), taken before the read-back check. After each
write, a plain `get_online_features` on 2,000 sampled items must return exactly the parquet's values.
Redis is a redis-server started here on 127.0.0.1 (free port, temp dir, no persistence), flushed before
each measurement and stopped at the end; its own memory is not in the RSS figures. A stock run that
exceeds `--feast-timeout` or `--max-rss-mb` is killed and its throughput extrapolated from the largest
finished size, labelled as such in the JSON. Writes benchmarks/results/materialize.json.

The parquet lists items by ascending id. Feast serializes int64 ids little-endian, so that order is
scattered over SQLite's index; `--sqlite-key-ordered` adds a `sqlite_key_ordered` section whose parquet
lists the items in the stored key order instead (what `in_key_order` gives a flow), for both methods.

    python benchmarks/materialize.py --sqlite-key-ordered              # everything (about 45 min)
    python benchmarks/materialize.py --sizes 10000 --stores sqlite --out /tmp/materialize.json
    python benchmarks/materialize.py --sizes 100000 --methods specrec --dask-workers 2 \
        --out benchmarks/results/materialize_dask.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

RESULTS = REPO / "benchmarks" / "results" / "materialize.json"
SIZES = (10_000, 100_000, 1_000_000)
STORES = ("sqlite", "redis")
METHODS = ("specrec", "feast")
DIM = 64
SEMANTIC_LEVELS = 3
CODEBOOK = 256
BUNDLE = "bundle-2024-01-01"
EVENT_TIME = datetime(2024, 1, 1, tzinfo=UTC)  # every row; the window below brackets it
WINDOW = (datetime(2023, 12, 31, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
PARQUET_CHUNK = 100_000
SAMPLE = 2_000
VIEW = "item_repr"


# ----------------------------------------------------------------------------- data


def write_parquet(path: Path, n: int, key_ordered: bool = False, seed: int = 0) -> None:
    """n synthetic items in id order (or in the online table's key order), written in chunks."""
    import pandas as pd
    import pyarrow.parquet as pq

    from specrec.nearline.online_writer import key_order

    ids = np.arange(n, dtype=np.int64)
    if key_ordered:  # what in_key_order gives: Feast's serialized (little-endian) key order
        ids = ids[key_order(pd.DataFrame({"item_id": ids}), [("item_id", "INT64")])]
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, PARQUET_CHUNK):
        table = _chunk(rng, ids[start : start + PARQUET_CHUNK])
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=PARQUET_CHUNK)
    if writer:
        writer.close()
    assert pq.ParquetFile(path).metadata.num_rows == n


def _chunk(rng: np.random.Generator, ids: np.ndarray) -> Any:
    """The rows of these item ids as an Arrow table."""
    import pyarrow as pa

    m = len(ids)
    embedding = rng.standard_normal((m, DIM)).astype(np.float32)  # (m, DIM)
    codes = rng.integers(0, CODEBOOK, (m, SEMANTIC_LEVELS)).astype(np.int64)  # (m, levels)
    return pa.table(
        {
            "item_id": pa.array(ids),
            "embedding": pa.ListArray.from_arrays(
                np.arange(0, m * DIM + 1, DIM, dtype=np.int32), embedding.ravel()
            ),
            "semantic_id": pa.ListArray.from_arrays(
                np.arange(0, m * SEMANTIC_LEVELS + 1, SEMANTIC_LEVELS, dtype=np.int32), codes.ravel()
            ),
            "bundle_id": pa.array([BUNDLE] * m),
            "event_timestamp": pa.array(
                np.full(m, int(EVENT_TIME.timestamp() * 1e6)), pa.timestamp("us", "UTC")
            ),
        }
    )


# ----------------------------------------------------------------------------- one measurement (worker)


def make_store(repo: Path, store: str, parquet: Path, redis_port: int | None) -> Any:
    """A fresh Feast repo over the parquet, applied (not timed)."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32, Int64, String

    repo.mkdir(parents=True, exist_ok=True)
    online = (
        f"  type: sqlite\n  path: {repo / 'online.db'}\n"
        if store == "sqlite"
        else f"  type: redis\n  connection_string: 127.0.0.1:{redis_port}\n"
    )
    (repo / "feature_store.yaml").write_text(
        f"project: bench\nprovider: local\nregistry: {repo / 'registry.db'}\nonline_store:\n{online}"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
    )
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name=VIEW,
        entities=[item],
        ttl=timedelta(0),
        schema=[
            Field(name="embedding", dtype=Array(Float32)),
            Field(name="semantic_id", dtype=Array(Int64)),
            Field(name="bundle_id", dtype=String),
        ],
        source=FileSource(name="items", path=str(parquet), timestamp_field="event_timestamp"),
    )
    fs = FeatureStore(repo_path=str(repo))
    fs.apply([item, view])
    return fs


def run_specrec(fs: Any, parquet: Path, batch_rows: int) -> int:
    """specrec: stream the parquet through write_online."""
    import pyarrow.parquet as pq

    from specrec.nearline.online_writer import write_online

    frames: Iterator[Any] = (
        b.to_pandas() for b in pq.ParquetFile(parquet).iter_batches(batch_size=batch_rows)
    )
    return write_online(fs, VIEW, frames, batch_rows=batch_rows, progress=False)


def _write_range(repo: str, parquet: str, lo: int, hi: int, batch_rows: int) -> int:
    """One Dask task: rows [lo, hi) of the parquet through write_online into the repo's store."""
    import pyarrow.parquet as pq
    from feast import FeatureStore

    from specrec.nearline.online_writer import write_online

    file = pq.ParquetFile(parquet)
    sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    groups = [g for g in range(len(sizes)) if starts[g] < hi and starts[g + 1] > lo]  # only the overlapping
    table = file.read_row_groups(groups).slice(lo - int(starts[groups[0]]), hi - lo)
    frames = (b.to_pandas() for b in table.to_batches(max_chunksize=batch_rows))
    return write_online(FeatureStore(repo_path=repo), VIEW, frames, batch_rows=batch_rows, progress=False)


def _warm() -> None:
    """Import what a write needs (a fresh worker process pays this once; a running cluster has paid it)."""
    import feast  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import specrec.nearline.online_writer  # noqa: F401


def run_specrec_dask(repo: Path, parquet: Path, batch_rows: int, workers: int) -> tuple[int, float, float]:
    """specrec-dask: contiguous row ranges written by `workers` Dask worker processes; (rows, write seconds,
    cluster start-up seconds, the workers' imports included)."""
    import pyarrow.parquet as pq
    from distributed import Client, LocalCluster

    from specrec.sharding import ranges

    n = pq.ParquetFile(parquet).metadata.num_rows
    started = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        client.run(_warm)
        up = time.perf_counter() - started
        started = time.perf_counter()
        futures = [
            client.submit(_write_range, str(repo), str(parquet), lo, hi, batch_rows, pure=False)
            for lo, hi in ranges(n, workers)
        ]
        rows = sum(client.gather(futures))
        return rows, time.perf_counter() - started, up


def run_feast(fs: Any, parquet: Path) -> int:
    """Stock: FeatureStore.materialize over the explicit window."""
    import pyarrow.parquet as pq

    fs.materialize(start_date=WINDOW[0], end_date=WINDOW[1], feature_views=[VIEW])
    return pq.ParquetFile(parquet).metadata.num_rows


def verify(fs: Any, parquet: Path, n: int, seed: int = 1) -> bool:
    """A plain get_online_features returns the parquet's values (float32 bit for bit) for sampled items."""
    import pyarrow.parquet as pq

    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(SAMPLE, n), replace=False))
    table = pq.read_table(parquet).take(rows)
    got = fs.get_online_features(
        [f"{VIEW}:embedding", f"{VIEW}:semantic_id", f"{VIEW}:bundle_id"],
        [{"item_id": int(i)} for i in table.column("item_id").to_pylist()],
    ).to_dict()
    sent = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    same_embedding = np.array_equal(
        np.asarray(got["embedding"], np.float32).view(np.uint32), sent.view(np.uint32)
    )
    same_codes = got["semantic_id"] == table.column("semantic_id").to_pylist()
    return bool(same_embedding and same_codes and got["bundle_id"] == [BUNDLE] * len(rows))


def worker(args: argparse.Namespace) -> None:
    """One (store, size, method) measurement; the result goes to args.result as JSON."""
    fs = make_store(Path(args.repo), args.store, Path(args.parquet), args.redis_port)
    started, extra = time.perf_counter(), {}
    if args.method == "specrec":
        rows = run_specrec(fs, Path(args.parquet), args.batch_rows)
    elif args.method == "specrec-dask":
        workers = args.dask_workers
        rows, seconds, up = run_specrec_dask(Path(args.repo), Path(args.parquet), args.batch_rows, workers)
        extra = {"dask_cluster_start_s": up, "dask_workers": args.dask_workers}
    else:
        rows = run_feast(fs, Path(args.parquet))
    if args.method != "specrec-dask":
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "verified": verify(fs, Path(args.parquet), rows),
    } | extra
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- Redis server


class RedisServer:
    """redis-server on 127.0.0.1 and a free port, in a temp dir, without persistence."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit(
                "redis-server not found; install it (apt-get install redis-server) or pass --stores sqlite"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL)
        self._wait()

    def _wait(self, seconds: float = 10.0) -> None:
        """Block until PING answers."""
        import redis

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        sys.exit(f"redis-server did not answer on 127.0.0.1:{self.port} within {seconds:.0f} s")

    def flush(self) -> None:
        """Empty every database."""
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        """Terminate the server this object started."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


# ----------------------------------------------------------------------------- driver


def measure(
    args: argparse.Namespace, work: Path, store: str, parquet: Path, method: str, port: int | None
) -> dict:
    """Run one measurement in a fresh subprocess; {"killed": why} if it hit its time or memory limit."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{store}-{parquet.stem}-{method}-", dir=work))
    result = run_dir / "result.json"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--store",
        store,
        "--method",
        method,
        "--result",
        str(result),
    ]
    cmd += ["--parquet", str(parquet), "--repo", str(run_dir / "repo"), "--batch-rows", str(args.batch_rows)]
    cmd += ["--redis-port", str(port)] if port else []
    cmd += ["--dask-workers", str(args.dask_workers)] if method == "specrec-dask" else []
    limit = args.feast_timeout if method == "feast" else args.specrec_timeout
    load = os.getloadavg()[0]
    print(f"  {store:6s} {parquet.stem:26s} {method:8s} ... ", end="", flush=True)
    try:
        killed = run_watched(cmd, limit, args.max_rss_mb)
    finally:
        shutil.rmtree(run_dir / "repo", ignore_errors=True)
    if killed:
        print(killed)
        return {"killed": killed, "load_avg_1m_before": round(load, 2)}
    out = json.loads(result.read_text()) | {"load_avg_1m_before": round(load, 2)}
    rate = out["rows"] / out["seconds"]
    print(f"{out['seconds']:8.1f} s {rate:>10,.0f} rows/s {out['peak_rss_mb']:7.0f} MB (load {load:.1f})")
    if not out["verified"]:
        sys.exit(f"{method} on {store}, {parquet.stem}: get_online_features did not return what was written")
    return out


def run_watched(cmd: list[str], limit: float, max_rss_mb: float) -> str | None:
    """Run cmd; kill it past `limit` seconds or `max_rss_mb` resident (this is a shared machine)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    watched = psutil.Process(proc.pid)
    started = time.monotonic()
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        try:
            rss_mb = watched.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            rss_mb = 0.0
        if elapsed > limit or rss_mb > max_rss_mb:
            proc.kill()
            proc.wait()
            return (
                f"killed after {elapsed:.0f} s" if elapsed > limit else f"killed at {rss_mb:.0f} MB resident"
            )
        time.sleep(0.25)
    if proc.returncode:
        sys.exit(f"worker failed ({proc.returncode}): {shlex.join(cmd)}")
    return None


def summarise(store_runs: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per size: the issue's fields, plus speed-up and (where needed) the extrapolation note."""
    summary: dict[str, dict] = {}
    for n, runs in sorted(store_runs.items()):
        ours, stock = _finished(runs.get("specrec")), _finished(runs.get("feast"))
        entry: dict[str, Any] = {}
        if ours:
            entry |= {
                "specrec_rows_per_s": round(ours["rows"] / ours["seconds"]),
                "specrec_seconds": round(ours["seconds"], 2),
                "specrec_peak_rss_mb": round(ours["peak_rss_mb"]),
            }
        if stock:
            entry |= {
                "feast_rows_per_s": round(stock["rows"] / stock["seconds"]),
                "feast_seconds": round(stock["seconds"], 2),
                "feast_peak_rss_mb": round(stock["peak_rss_mb"]),
            }
        elif "feast" in runs:
            entry |= _extrapolated(store_runs, n, runs["feast"]["killed"])
        dask = _finished(runs.get("specrec-dask"))
        if dask:
            entry |= {
                "specrec_dask_rows_per_s": round(dask["rows"] / dask["seconds"]),
                "specrec_dask_seconds": round(dask["seconds"], 2),
                "dask_cluster_start_s": round(dask["dask_cluster_start_s"], 2),
                "dask_workers": dask["dask_workers"],
            }
            if ours:
                ratio = entry["specrec_dask_rows_per_s"] / entry["specrec_rows_per_s"]
                entry["dask_speedup"] = round(ratio, 2)
        if "specrec_rows_per_s" in entry and entry.get("feast_rows_per_s"):
            entry["speedup"] = round(entry["specrec_rows_per_s"] / entry["feast_rows_per_s"], 2)
        entry["load_avg_1m_before"] = {m: r["load_avg_1m_before"] for m, r in runs.items()}
        summary[str(n)] = entry
    return summary


def _finished(run: dict | None) -> dict | None:
    """The run's result, or None if it was killed or not run."""
    return run if run and "killed" not in run else None


def _extrapolated(store_runs: dict[int, dict[str, dict]], n: int, killed: str) -> dict[str, Any]:
    """Stock throughput at n taken from the largest smaller size that finished."""
    done = [m for m, runs in store_runs.items() if m < n and _finished(runs.get("feast"))]
    if not done:
        return {"feast_rows_per_s": None, "feast_rows_per_s_note": f"stock materialize {killed}"}
    base = max(done)
    stock = store_runs[base]["feast"]
    return {
        "feast_rows_per_s": round(stock["rows"] / stock["seconds"]),
        "feast_peak_rss_mb": None,
        "feast_rows_per_s_note": (
            f"extrapolated: stock materialize of {n} items was {killed} (--feast-timeout, --max-rss-mb); "
            f"this is its measured rate at {base} items (optimistic for Feast: its per-row cost grows with "
            "the table)"
        ),
    }


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    import feast
    import pandas

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "feast": feast.__version__,
        "pandas": pandas.__version__,
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_version,
        "note": "shared machine: see load_avg_1m_before per run",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of items")
    p.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES), help="online stores")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="writers to compare")
    p.add_argument(
        "--sqlite-key-ordered",
        action="store_true",
        help="also run SQLite on a parquet in the online table's key order (in_key_order)",
    )
    p.add_argument("--batch-rows", type=int, default=50_000, help="rows per specrec write batch")
    p.add_argument("--feast-timeout", type=float, default=600, help="seconds before a stock run is killed")
    p.add_argument(
        "--specrec-timeout", type=float, default=900, help="seconds before a specrec run is killed"
    )
    p.add_argument("--max-rss-mb", type=float, default=8192, help="resident MB at which a run is killed")
    p.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="also run specrec-dask: the write split over this many Dask worker processes (0: off)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("store", "method", "parquet", "repo", "result"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--redis-port", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the data, run every measurement, print the table and write the JSON."""
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    os.environ.setdefault("FEAST_USAGE", "False")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="specrec-materialize-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = [(store, store, False) for store in args.stores]  # (label, store, key-ordered input)
    variants += [("sqlite_key_ordered", "sqlite", True)] if args.sqlite_key_ordered else []
    results: dict[str, Any] = {}
    try:
        for label, store, key_ordered in variants:
            results[label] = run_store(args, work, store, key_ordered)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["command"] = "python " + shlex.join(["benchmarks/materialize.py", *(argv or sys.argv[1:])])
    results["machine"] = machine()
    results["settings"] = {"dim": DIM, "semantic_levels": SEMANTIC_LEVELS, "batch_rows": args.batch_rows}
    results["settings"] |= {"dask_workers": args.dask_workers} if args.dask_workers else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, [label for label, _, _ in variants])


def run_store(args: argparse.Namespace, work: Path, store: str, key_ordered: bool) -> dict[str, dict]:
    """Every size and method on one store (a Redis server of its own for the redis store)."""
    server = RedisServer(work) if store == "redis" else None
    runs: dict[int, dict[str, dict]] = {}
    try:
        for n in sorted(args.sizes):
            parquet = work / (f"items-{n}-key-ordered.parquet" if key_ordered else f"items-{n}.parquet")
            if not parquet.exists():
                write_parquet(parquet, n, key_ordered)
            runs[n] = {}
            for method in [*args.methods, *(["specrec-dask"] if args.dask_workers else [])]:
                if server:
                    server.flush()
                runs[n][method] = measure(args, work, store, parquet, method, server.port if server else None)
    finally:
        if server:
            server.stop()
    return summarise(runs)


def print_table(results: dict[str, Any], stores: list[str]) -> None:
    """The results as a fixed-width table."""
    head = f"{'store':20s}{'items':>10s}{'specrec/s':>12s}{'feast/s':>11s}{'speedup':>9s}{'specrec s':>11s}"
    print("\n" + head + f"{'RSS MB (ours/feast)':>22s}")
    for store in stores:
        for n, e in results[store].items():
            feast_rate = e.get("feast_rows_per_s")
            stock = f"{feast_rate:,}" + ("*" if "feast_rows_per_s_note" in e else "") if feast_rate else "-"
            rss = f"{e.get('specrec_peak_rss_mb', '-')}/{e.get('feast_peak_rss_mb') or '-'}"
            print(
                f"{store:20s}{int(n):>10,d}{e.get('specrec_rows_per_s', 0):>12,}{stock:>11s}"
                f"{e.get('speedup', 0):>9.1f}{e.get('specrec_seconds', 0):>11.1f}{rss:>22s}"
            )
    print("* extrapolated, see feast_rows_per_s_note in the JSON")
    for store in stores:
        for n, e in results[store].items():
            if "specrec_dask_rows_per_s" in e:
                print(
                    f"{store:20s}{int(n):>10,d} specrec-dask ({e['dask_workers']} workers): "
                    f"{e['specrec_dask_rows_per_s']:,} rows/s, x{e.get('dask_speedup', 0):.2f} of in-process "
                    f"(cluster start {e['dask_cluster_start_s']:.1f} s, not counted)"
                )


if __name__ == "__main__":
    main()
