"""Scale benchmark on the synthetic generator: a 1M-user x 100k-item log, ingest, retrieval, the scorer.

Four parts, each printed as it finishes and written to benchmarks/results/scale.json:

1. `generate`: `specrec synth` (a subprocess, so its time and peak memory are its own) writes the
   log: 1M users, 100k items, 20 events per user on average (~19M events), in 100k-user row groups.
2. `ingest`: the project's own loader (`table` source, the settings `specrec.data.synthetic.data_config`
   gives) reads the whole log; the real validator (`validate_interactions`, `validate_items`) and the
   `prepare` stage run on the first `--validate-rows` events (default 2M; 0 = all): rows/s and the
   time the whole log would take at that rate.
3. `retrieval`: faiss over 100k item embeddings of `fm.dim` (params.yaml) dimensions, L2-normalised as
   the FM's are (synthetic, not a trained FM: training one on 19M events does not fit this machine's
   budget): clustered by the generator's latent taste clusters, and isotropic (IVF's worst case).
   IndexFlatIP (what the scorer uses; one query at a time on faiss's default threads and on one) and
   IndexIVFFlat per nprobe: build time, one-query latency at top-200 (the scorer's candidates), batch
   queries/s, and the IVF's recall@200 against the exact index.
4. `load`: the real scorer (`specrec serve`, started and driven with benchmarks/serving.py's server and
   open-loop client) under requests drawn from the generator's traffic model: Zipf-like heavy users and
   session bursts, Poisson arrivals, over the serving bundle's users (the scorer knows only the users
   materialized in the Feast store: synthetic user i is the i-th of them), compared at the same loads with
   serving.py's evenly spaced, uniformly drawn requests and with Poisson arrivals of uniform users (to
   separate the arrival process from the users); and one load of 1M-user traffic whose users the scorer
   has never seen (the cold-start path).

    .venv/bin/python benchmarks/scale.py                  # the defaults above (< 15 min on 2 cores)
    .venv/bin/python benchmarks/scale.py --quick          # 50k users x 10k items, short loads (smoke)
    .venv/bin/python benchmarks/scale.py --reuse          # skip generation when the log already exists
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serving  # noqa: E402  (benchmarks/serving.py: server start/stop and the open-loop client)

from specrec.data.synthetic import SynthConfig, catalogue, data_config, traffic_schedule  # noqa: E402

BIN = Path(sys.executable).parent


def _now() -> float:
    """Wall-clock seconds (monotonic)."""
    return time.perf_counter()


# --------------------------------------------------------------------------------------- generate


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Run `specrec synth` for the configured size (or reuse a log of the same parameters)."""
    manifest_path = args.data / "manifest.json"
    cmd = [
        str(BIN / "specrec"),
        "synth",
        "--users",
        str(args.users),
        "--items",
        str(args.items),
        "--events-per-user",
        str(args.events_per_user),
        "--out",
        str(args.data),
        "--set",
        f"chunk_users={args.chunk_users}",
    ]
    if args.reuse and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        p = manifest["params"]
        if (p["users"], p["items"], p["events_per_user"]) == (args.users, args.items, args.events_per_user):
            print(f"generate: reusing {args.data} ({manifest['rows']:,} rows)", flush=True)
            return _generate_summary(manifest, None, None, shlex.join(cmd[1:]), reused=True)
    t = _now()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = _now() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = _generate_summary(json.loads(manifest_path.read_text()), wall, peak_mb, shlex.join(cmd[1:]))
    print(f"generate: {out}", flush=True)
    return out


def _generate_summary(
    manifest: dict[str, Any], wall: float | None, peak_mb: float | None, cmd: str, reused: bool = False
) -> dict[str, Any]:
    """Rows, sizes and times of a generated log."""
    return {
        "command": cmd,
        "reused": reused,
        "rows": manifest["rows"],
        "users": manifest["users"],
        "items": manifest["items"],
        "events_per_user_realised": round(manifest["rows"] / manifest["users"], 2),
        "generator_seconds": manifest["seconds"],
        "process_wall_s": None if wall is None else round(wall, 1),
        "process_peak_rss_mb": None if peak_mb is None else round(peak_mb),
        "rows_per_s": round(manifest["rows"] / manifest["seconds"]),
        "file_mb": {k: round(v / 1e6, 1) for k, v in manifest["bytes"].items()},
    }


# ----------------------------------------------------------------------------------------- ingest


def ingest_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Read the log with the project's loader; validate and prepare a prefix with the real stage code."""
    from specrec.config import ValidateConfig
    from specrec.data.loaders import load
    from specrec.data.prepare import prepare
    from specrec.data.validate import validate_interactions, validate_items

    t = _now()
    raw = load(data_config(args.data), ROOT)
    read_s = _now() - t
    total = len(raw.interactions)
    n = total if args.validate_rows == 0 else min(args.validate_rows, total)
    part = raw.interactions.iloc[:n].copy()
    t = _now()
    inter = validate_interactions(part, raw.timestamp_unit, ValidateConfig())
    validate_s = _now() - t
    t = _now()
    items = validate_items(raw.items)
    items_s = _now() - t
    t = _now()
    prepared = prepare(inter.clean, items.clean)
    prepare_s = _now() - t
    out = {
        "rows_in_log": total,
        "read_s": round(read_s, 1),
        "read_rows_per_s": round(total / read_s),
        "validated_rows": n,
        "quarantined": inter.rows_quarantined + items.rows_quarantined,
        "validate_s": round(validate_s, 1),
        "validate_rows_per_s": round(n / validate_s),
        "validate_whole_log_s_at_that_rate": round(total / (n / validate_s)),
        "validate_items_s": round(items_s, 2),
        "prepare_s": round(prepare_s, 1),
        "prepare_rows_per_s": round(n / prepare_s),
        "prepared_users": len(prepared.users),
        "prepared_items": len(prepared.items),
    }
    print(f"ingest: {out}", flush=True)
    return out


# -------------------------------------------------------------------------------------- retrieval


def embeddings(cfg: SynthConfig, dim: int, n_queries: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors (I, dim) and user queries (Q, dim), L2-normalised: each a random point of its latent
    cluster's centre (the generator's item clusters; a user's home cluster) plus `spread` x N(0, 1) noise.
    spread = inf gives isotropic random vectors, the worst case for an IVF index."""
    rng = np.random.default_rng(0)
    cat = catalogue(cfg)
    centres = rng.normal(size=(max(cfg.clusters, 1), dim))  # (C, D)
    if np.isinf(spread):
        centres, spread = np.zeros_like(centres), 1.0
    items = centres[cat.cluster] + spread * rng.normal(size=(cfg.items, dim))  # (I, D)
    users = centres[rng.integers(0, len(centres), n_queries)] + spread * rng.normal(size=(n_queries, dim))
    return tuple(  # type: ignore[return-value]
        np.ascontiguousarray((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
        for x in (items, users)
    )


def _one_by_one(index: Any, queries: np.ndarray, k: int) -> tuple[dict[str, float], np.ndarray]:
    """p50/p99 ms of single-query searches (the scorer's case) and their result rows."""
    times, rows = [], []
    for q in queries:
        t = _now()
        _, r = index.search(q[None, :], k)
        times.append((_now() - t) * 1000)
        rows.append(r[0])
    lat = np.asarray(times)
    return {
        "one_query_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "one_query_p99_ms": round(float(np.percentile(lat, 99)), 3),
    }, np.stack(rows)


def _batch(index: Any, queries: np.ndarray, k: int) -> float:
    """Queries per second of one batched search."""
    t = _now()
    index.search(queries, k)
    return len(queries) / (_now() - t)


def _flat(
    items: np.ndarray, queries: np.ndarray, args: argparse.Namespace
) -> tuple[dict[str, Any], np.ndarray]:
    """The scorer's exact index: build, one query at a time with faiss's default threads and with one,
    batched queries/s; and the exact neighbours of the one-at-a-time queries."""
    import faiss

    threads = faiss.omp_get_max_threads()
    t = _now()
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)
    out: dict[str, Any] = {"build_s": round(_now() - t, 3)}
    single = queries[: args.single_queries]
    lat, exact = _one_by_one(flat, single, args.k)
    out[f"threads_{threads}"] = lat
    faiss.omp_set_num_threads(1)
    out["threads_1"] = _one_by_one(flat, single, args.k)[0]
    faiss.omp_set_num_threads(threads)
    out["batch_queries_per_s"] = round(_batch(flat, queries, args.k))
    return out, exact


def _ivf(
    items: np.ndarray, queries: np.ndarray, exact: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """IndexIVFFlat: build (k-means + add); per nprobe one query at a time (one thread), batched queries/s
    and recall@k against the exact index."""
    import faiss

    dim = items.shape[1]
    t = _now()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(items)
    ivf.add(items)
    out: dict[str, Any] = {"nlist": args.nlist, "build_s": round(_now() - t, 2)}
    threads = faiss.omp_get_max_threads()
    for nprobe in args.nprobes:
        ivf.nprobe = nprobe
        faiss.omp_set_num_threads(1)
        lat, approx = _one_by_one(ivf, queries[: args.single_queries], args.k)
        faiss.omp_set_num_threads(threads)
        recall = np.mean([len(np.intersect1d(a, e)) / args.k for a, e in zip(approx, exact, strict=True)])
        out[f"nprobe_{nprobe}"] = {
            "threads_1": lat,
            "batch_queries_per_s": round(_batch(ivf, queries, args.k)),
            "recall_at_k": round(float(recall), 4),
        }
    return out


def retrieval_figures(args: argparse.Namespace, dim: int) -> dict[str, Any]:
    """Exact (flat) and IVF faiss indexes over the catalogue, on clustered and on isotropic vectors."""
    import faiss

    cfg = SynthConfig(users=1, items=args.items)
    out: dict[str, Any] = {
        "items": args.items,
        "dim": dim,
        "k": args.k,
        "faiss_default_threads": faiss.omp_get_max_threads(),
        "vectors": "synthetic, L2-normalised: clustered = generator's 20 latent clusters, centre + "
        f"{args.spread} x N(0,1) noise per dimension; isotropic = N(0,1) (IVF's worst case)",
    }
    for name, spread in (("clustered", args.spread), ("isotropic", float("inf"))):
        items, queries = embeddings(cfg, dim, args.queries, spread)
        flat, exact = _flat(items, queries, args)
        out[name] = {"flat": flat, "ivf": _ivf(items, queries, exact, args)}
        print(f"retrieval {name}: {out[name]}", flush=True)
    return out


# ------------------------------------------------------------------------------------------- load


def traffic_stats(offsets: np.ndarray, users: np.ndarray, duration_s: float) -> dict[str, Any]:
    """How bursty and concentrated a request stream is."""
    counts = np.sort(np.bincount(users))[::-1]
    distinct = int((counts > 0).sum())
    per_100ms = np.bincount((offsets * 10).astype(np.int64), minlength=int(duration_s * 10))
    order = np.lexsort((offsets, users))
    u, t = users[order], offsets[order]
    again = (u[1:] == u[:-1]) & (np.diff(t) < 60)
    return {
        "requests": len(users),
        "distinct_users": distinct,
        "top_1pct_users_share": round(float(counts[: max(1, distinct // 100)].sum() / counts.sum()), 3),
        "dispersion_per_100ms": round(float(per_100ms.var() / per_100ms.mean()), 3),
        "same_user_within_60s_share": round(float(again.sum() / len(users)), 3),
    }


def _uniform_stats(users: list[int], rate: float, duration_s: float) -> dict[str, Any]:
    """The same statistics for serving.py's uniform stream."""
    import random

    rng = random.Random(1)
    n = max(1, int(rate * duration_s))
    return traffic_stats(
        np.arange(n) / rate, np.asarray([rng.choice(users) for _ in range(n)], dtype=np.int64), duration_s
    )


def _poisson_uniform(
    n_users: int, rate: float, duration_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrivals at `rate` with users drawn uniformly (1..n_users): separates the arrival process
    from the users' concentration and sessions."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1 / rate, int(rate * duration_s * 1.5)))
    offsets = offsets[offsets < duration_s]
    return offsets, rng.integers(1, n_users + 1, len(offsets))


async def load_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The real scorer under synthetic and uniform traffic at each load, and 1M unseen users once."""
    served, bundle_id, _, scorer_version = serving.serving_inputs()
    server = serving.servers_for("specrec", args.params, scorer_version)[0]
    result: dict[str, Any] = {
        "serving_bundle": bundle_id,
        "served_users": len(served),
        "command": server.command(),
    }
    # the scorer knows only the served users: synthetic user i (1..n) is the i-th of them
    known = SynthConfig(users=len(served), items=args.items, diurnal_amplitude=0.0, seed=args.seed)
    lookup = np.asarray([0, *sorted(served)], dtype=np.int64)
    try:
        server.start(args.log_dir)
        await serving.wait_ready(server, args.startup_timeout)
        call = serving.specrec_call(server.url)
        await serving.run_load(
            call, served, args.loads[0], args.warmup, args.max_inflight, args.timeout, seed=0
        )
        for i, rate in enumerate(args.loads):
            offsets, ids = traffic_schedule(
                dataclasses.replace(known, seed=args.seed + i), rate, args.duration
            )
            stream = list(zip(offsets.tolist(), lookup[ids].tolist(), strict=True))
            stats = traffic_stats(offsets, ids, args.duration)
            result[f"synthetic_{rate:g}"] = await _measure(server, call, stream, rate, args, stats)
            stats = _uniform_stats(served, rate, args.duration)
            result[f"uniform_{rate:g}"] = await _measure(server, call, None, rate, args, stats, served, i + 1)
            offsets, ids = _poisson_uniform(len(served), rate, args.duration, args.seed + i)
            stream = list(zip(offsets.tolist(), lookup[ids].tolist(), strict=True))
            stats = traffic_stats(offsets, ids, args.duration)
            result[f"poisson_{rate:g}"] = await _measure(server, call, stream, rate, args, stats)
        million = SynthConfig(users=args.users, items=args.items, diurnal_amplitude=0.0, seed=args.seed)
        rate = args.million_rate
        offsets, ids = traffic_schedule(million, rate, args.duration)
        stream = list(zip(offsets.tolist(), ids.tolist(), strict=True))
        stats = traffic_stats(offsets, ids, args.duration)
        result[f"synthetic_{args.users}_users_{rate:g}"] = await _measure(
            server, call, stream, rate, args, stats
        )
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"load: {key}: {value}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a load that cannot run is reported, not faked
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"load: FAILED: {result['error']}", flush=True)
    finally:
        server.stop()
    return result


async def _measure(
    server: Any,
    call: Any,
    stream: list[tuple[float, int]] | None,
    rate: float,
    args: argparse.Namespace,
    stats: dict[str, Any],
    users: list[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One load (a synthetic stream, or serving.py's uniform one when `stream` is None), with CPU use."""
    cpu0, client0 = [serving.group_cpu_s(server)], time.process_time()
    if stream is None:
        assert users is not None
        load = await serving.run_load(call, users, rate, args.duration, args.max_inflight, args.timeout, seed)
    else:
        load = await serving.run_schedule(call, stream, rate, args.duration, args.max_inflight, args.timeout)
    out = load.summary() | serving.cpu_per_request(
        [server], cpu0, time.process_time() - client0, len(load.latencies_ms)
    )
    out["traffic"] = stats
    return out


# ----------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import faiss
    import pandas as pd

    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "faiss": faiss.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared 2-core machine: other jobs may run on the same cores; client and server share them",
    }


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def print_figures(results: dict[str, Any]) -> None:
    """The headline figures, one line each."""
    g, i, r, ld = (results.get(k, {}) for k in ("generate", "ingest", "retrieval", "load"))
    if g:
        print(
            f"\ngenerate  {g['rows']:,} events in {g['generator_seconds']} s ({g['rows_per_s']:,}/s), "
            f"files {g['file_mb']} MB"
        )
    if i:
        print(
            f"ingest    read {i['read_rows_per_s']:,} rows/s; validate {i['validate_rows_per_s']:,} rows/s "
            f"(whole log ~{i['validate_whole_log_s_at_that_rate']} s); "
            f"prepare {i['prepare_rows_per_s']:,} rows/s"
        )
    for geometry in ("clustered", "isotropic"):
        g_res = r.get(geometry, {})
        rows = [("flat", g_res.get("flat"))] if g_res.get("flat") else []
        rows += [
            (k.replace("nprobe_", "ivf/"), v)
            for k, v in g_res.get("ivf", {}).items()
            if k.startswith("nprobe")
        ]
        for name, x in rows:
            one = x["threads_1"]
            recall = f", recall@{r['k']} {x['recall_at_k']}" if "recall_at_k" in x else ""
            print(
                f"faiss {geometry:<9} {name:<8} one query (1 thread) p50 {one['one_query_p50_ms']} ms "
                f"p99 {one['one_query_p99_ms']} ms, batch {x['batch_queries_per_s']:,} q/s{recall}"
            )
    for key, x in ld.items():
        if isinstance(x, dict) and "p50_ms" in x:
            print(
                f"load {key:<28} p50 {x['p50_ms']} ms p99 {x['p99_ms']} ms achieved {x['achieved_rps']} rps "
                f"errors {x['errors']}"
            )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000, help="Users in the synthetic log.")
    ap.add_argument(
        "--items", type=int, default=100_000, help="Items in the catalogue (and the faiss index)."
    )
    ap.add_argument("--events-per-user", type=float, default=20.0, help="Mean events per user.")
    ap.add_argument("--chunk-users", type=int, default=100_000, help="Users per generated row group.")
    ap.add_argument(
        "--data", type=Path, default=ROOT / "data" / "synthetic" / "scale", help="Where the log goes."
    )
    ap.add_argument("--reuse", action="store_true", help="Reuse a log of the same size in --data.")
    ap.add_argument(
        "--validate-rows", type=int, default=2_000_000, help="Events validated and prepared (0 = all)."
    )
    ap.add_argument("--queries", type=int, default=10_000, help="Queries of the batched faiss search.")
    ap.add_argument("--single-queries", type=int, default=1_000, help="One-at-a-time faiss queries.")
    ap.add_argument("--k", type=int, default=200, help="Neighbours per query (the scorer's candidates).")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists.")
    ap.add_argument(
        "--nprobes", type=int, nargs="+", default=[16, 64, 256], help="IVF lists searched per query (each)."
    )
    ap.add_argument("--spread", type=float, default=1.5, help="Noise around cluster centres (retrieval).")
    ap.add_argument(
        "--loads", type=float, nargs="+", default=[50.0, 100.0, 200.0], help="Offered loads (rps)."
    )
    ap.add_argument("--million-rate", type=float, default=100.0, help="Load of the 1M-user (unseen) traffic.")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per load.")
    ap.add_argument("--warmup", type=float, default=5.0, help="Seconds of unmeasured load first.")
    ap.add_argument("--max-inflight", type=int, default=64, help="Most requests outstanding at once.")
    ap.add_argument(
        "--timeout", type=float, default=5.0, help="Seconds from a request's due time to an error."
    )
    ap.add_argument("--startup-timeout", type=float, default=240.0, help="Seconds to wait for the scorer.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the traffic streams.")
    ap.add_argument(
        "--params", type=Path, default=ROOT / "params.yaml", help="params.yaml (fm.dim, the scorer)."
    )
    ap.add_argument(
        "--parts", nargs="+", default=["generate", "ingest", "retrieval", "load"], help="Parts to run."
    )
    ap.add_argument("--log-dir", type=Path, default=ROOT / "logs", help="Where the scorer's log goes.")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json", help="Results JSON."
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="Keep the other parts' figures already in --out (rerun some parts).",
    )
    ap.add_argument("--quick", action="store_true", help="Smoke run: 50k users x 10k items, 3 s loads.")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.items, args.chunk_users, args.validate_rows = 50_000, 10_000, 25_000, 200_000
        args.queries, args.single_queries, args.nlist, args.duration, args.warmup = 1000, 200, 128, 3.0, 1.0
        args.loads = [50.0, 100.0]
        args.data = args.data.with_name(args.data.name + "_quick")
        if "--out" not in argv:
            args.out = ROOT / "logs" / "scale_quick.json"
    args.params = args.params.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    from specrec.config import load_config

    dim = load_config(args.params).fm.dim
    command = shlex.join([".venv/bin/python", "benchmarks/scale.py", *argv])
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    results |= {
        "command": command,
        "machine": machine(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.setdefault("commands_by_part", {}).update({part: command for part in args.parts})
    results.setdefault("machine_by_part", {}).update({part: results["machine"] for part in args.parts})
    t = _now()
    if "generate" in args.parts:
        results["generate"] = generate(args)
    if "ingest" in args.parts:
        results["ingest"] = ingest_figures(args)
    if "retrieval" in args.parts:
        results["retrieval"] = retrieval_figures(args, dim)
    if "load" in args.parts:
        results["load"] = asyncio.run(load_figures(args))
        results["load"]["setup"] = {
            "loads_rps": args.loads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_inflight": args.max_inflight,
            "timeout_s": args.timeout,
            "synthetic": "specrec.data.synthetic.traffic_schedule (Poisson session starts, heavy-tailed "
            "users, bursts of session_events requests with lognormal gaps), no daily cycle over a 20 s load",
            "uniform": "benchmarks/serving.py run_load: evenly spaced, users uniform over the served ones",
            "poisson": "Poisson arrivals (exponential gaps) at the rate, users uniform over the served ones",
        }
    results["total_s"] = round(_now() - t, 1)
    print_figures(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['total_s']} s")


if __name__ == "__main__":
    main()
