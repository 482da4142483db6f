"""Serving benchmark: open-loop load on loopback against real servers, /recommend top-10, side by side.

Variants, each started as a subprocess on a free 127.0.0.1 port, measured, then stopped (with its
children) before the next one starts:

- `specrec`: `specrec serve` (user side in parallel with retrieval);
- `sequential`: `specrec serve --sequential` (retrieval, then the user side);
- `feast_mlflow`: the stock composition of the same thin scorer: `feast serve` for the user's state and
  the 200 candidates' item features, then `mlflow models serve` of the serving bundle's specrec-scorer
  for their scores, the client calling both and taking the top-10 (candidates precomputed by the
  client with the same faiss index, so the composition is not charged for retrieval);
- `feast_mlflow_norecycle`: the same with `feast serve --max-requests 0`, because the stock default
  recycles Feast's single gunicorn worker every ~1000 requests (a restart of a few seconds).

The load is open-loop: request i is due at t0 + i / rate whatever happened before, at most
`--max-inflight` requests are outstanding, and a request's latency runs from its due time (so queueing
in the client counts, no coordinated omission). A request that is not answered within `--timeout` of
its due time, or is answered with a non-2xx status, is an error; percentiles are over the answered ones.

    .venv/bin/python benchmarks/serving.py            # 25, 50, 100, 200 rps x 20 s per variant
    .venv/bin/python benchmarks/serving.py --quick    # one load (200 rps), 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from specrec.services import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRACKING_URI = f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
VARIANTS = ("specrec", "sequential", "feast_mlflow", "feast_mlflow_norecycle")
COMPOSED = ("feast_mlflow", "feast_mlflow_norecycle")
FEATURES = ["user_state:state", "user_state:recent_items"]
STATS_COLUMNS = ("count_1c", "count_7c", "trend", "mean_rating")
K = 10
CANDIDATES = 200  # what `specrec serve` retrieves by default

Call = Callable[[aiohttp.ClientSession, int, dict[str, list[float]]], Awaitable[str | None]]


# ----------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One server subprocess in its own process group, with its log file."""

    name: str
    cmd: list[str]
    ready_paths: list[str]
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        """Spawn the server (new session, so stop() can signal it and all its children)."""
        self.log_path = log_dir / f"specrec-bench-{self.name}.log"
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **self.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.cmd, *self._port_args()],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _port_args(self) -> list[str]:
        """The port flag in the server's own spelling."""
        return ["--port", str(self.port)] if self.cmd[0].endswith("specrec") else ["-p", str(self.port)]

    def command(self) -> str:
        """The command line, for the results file."""
        return shlex.join([Path(self.cmd[0]).name, *self.cmd[1:], *self._port_args()])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 15 s."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                if _group_gone(self.proc.pid):
                    break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def tail(self, n: int = 5) -> str:
        """Last lines of the server's log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])


def _group_gone(pgid: int) -> bool:
    """True once no process of the group is left (children may outlive the leader)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    time.sleep(0.5)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def group_cpu_s(server: Server) -> float:
    """CPU seconds used so far by a server's process group (live processes and their reaped children)."""
    if server.proc is None:
        return 0.0
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == server.proc.pid:
            total += sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def cpu_per_request(servers: list[Server], before: list[float], client_s: float, n: int) -> dict[str, Any]:
    """Server and client CPU milliseconds per answered request over one load, and the 1-min load average."""
    out: dict[str, Any] = {}
    for server, b in zip(servers, before, strict=True):
        out[f"{server.name}_cpu_ms_per_request"] = round((group_cpu_s(server) - b) * 1000 / max(n, 1), 3)
    out["client_cpu_ms_per_request"] = round(client_s * 1000 / max(n, 1), 3)
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return out


async def wait_ready(server: Server, timeout_s: float) -> None:
    """Poll the server's readiness paths in order until each answers 200; raise on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for path in server.ready_paths:
            while True:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with {server.proc.returncode}: {server.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} not ready on {path} after {timeout_s:.0f} s")
                try:
                    async with session.get(server.url + path) as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """Outcome of one offered load."""

    offered_rps: float
    latencies_ms: list[float]
    errors: int
    elapsed_s: float
    error_kinds: dict[str, int]
    parts_ms: dict[str, list[float]]
    flags: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """p50/p99 (ms), achieved rps and errors."""
        lat = np.asarray(self.latencies_ms)
        out: dict[str, Any] = {
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
            "achieved_rps": round(lat.size / self.elapsed_s, 2),
            "errors": self.errors,
            "requests": lat.size + self.errors,
        }
        if self.error_kinds:
            out["error_kinds"] = dict(self.error_kinds)
        out.update({f"answers_{k}": v for k, v in sorted(self.flags.items())})
        return out


async def run_load(
    call: Call,
    users: list[int],
    rate: float,
    duration_s: float,
    max_inflight: int,
    timeout_s: float,
    seed: int,
) -> LoadResult:
    """Offer `rate` requests/s for `duration_s`, evenly spaced, users drawn uniformly, at most
    `max_inflight` outstanding."""
    rng = random.Random(seed)
    n = max(1, int(rate * duration_s))
    schedule = [(i / rate, rng.choice(users)) for i in range(n)]
    return await run_schedule(call, schedule, rate, duration_s, max_inflight, timeout_s)


async def run_schedule(
    call: Call,
    schedule: Sequence[tuple[float, int]],
    rate: float,
    duration_s: float,
    max_inflight: int,
    timeout_s: float,
) -> LoadResult:
    """Send each (offset s, user) of `schedule` at t0 + offset whatever happened before (open loop), at
    most `max_inflight` outstanding; `rate` is the offered load it is reported as."""
    slots = asyncio.Semaphore(max_inflight)
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    flags: dict[str, int] = {}
    parts: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=max_inflight, limit_per_host=max_inflight)

    async def one(session: aiohttp.ClientSession, due: float, user: int) -> None:
        """One request, timed from its due time."""
        try:
            async with asyncio.timeout(timeout_s):
                async with slots:
                    flag = await call(session, user, parts)
            latencies.append((time.perf_counter() - due) * 1000)
            for f in (flag or "").split(";"):
                if f:
                    flags[f] = flags.get(f, 0) + 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            kinds[kind] = kinds.get(kind, 0) + 1

    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter() + 0.05
        tasks = []
        for offset, user in schedule:
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, due, user)))
        await asyncio.gather(*tasks)
        elapsed = max(time.perf_counter() - t0, duration_s)
    return LoadResult(rate, latencies, sum(kinds.values()), elapsed, kinds, parts, flags)


class HTTPStatusError(Exception):
    """A non-2xx answer."""


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    """POST a JSON body, return the decoded JSON answer; raise on a non-2xx status."""
    async with session.post(url, json=body) as resp:
        data = await resp.read()
        if resp.status >= 300:
            raise HTTPStatusError(f"{resp.status}: {data[:200]!r}")
    return json.loads(data)


def specrec_call(url: str) -> Call:
    """POST /recommend {user_id, k} to the specrec scorer."""

    async def call(session: aiohttp.ClientSession, user: int, parts: dict[str, list[float]]) -> str | None:
        """One /recommend; flags: full, degraded or cold_start, and the answering bundle."""
        out = await post_json(session, f"{url}/recommend", {"user_id": user, "k": K})
        if "items" not in out:
            raise HTTPStatusError(f"no items in answer: {str(out)[:200]}")
        kind = "degraded" if out.get("degraded") else "cold_start" if out.get("cold_start") else "full"
        return f"{kind};bundle={out.get('bundle_id')}"

    return call


ITEM_FEATURES = ["item_repr:embedding", *(f"item_stats:{c}" for c in STATS_COLUMNS)]


def _feast_columns(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """Feast serve's answer as {feature name: values per entity row}."""
    names = answer["metadata"]["feature_names"]
    return {name: res["values"] for name, res in zip(names, answer["results"], strict=True)}


def feast_mlflow_call(
    feast_url: str, mlflow_url: str, bundle_id: str, candidates: dict[int, list[int]]
) -> Call:
    """The stock composition of the same thin scorer: Feast's feature server for the user's state and
    the candidates' item features (two reads, concurrently), the scorer's inputs assembled in the
    client, `mlflow models serve` of specrec-scorer for the scores, top-k in the client. The
    candidates come precomputed (the same faiss top-200 the scorer retrieves), so the composition is
    not charged for retrieval."""

    async def call(session: aiohttp.ClientSession, user: int, parts: dict[str, list[float]]) -> str | None:
        """One composed request; client-side time per part goes to `parts`."""
        from models.scorer import stats_features

        t = time.perf_counter()
        cands = candidates[user]
        user_body = {"features": FEATURES, "entities": {"user_id": [user], "bundle_id": [bundle_id]}}
        item_body = {
            "features": ITEM_FEATURES,
            "entities": {"item_id": cands, "bundle_id": [bundle_id] * len(cands)},
        }
        u_ans, i_ans = await asyncio.gather(
            post_json(session, f"{feast_url}/get-online-features", user_body),
            post_json(session, f"{feast_url}/get-online-features", item_body),
        )
        if "results" not in u_ans or "results" not in i_ans:
            raise HTTPStatusError(f"no results from feast: {str(u_ans)[:100]} {str(i_ans)[:100]}")
        t1 = time.perf_counter()
        u_cols, i_cols = _feast_columns(u_ans), _feast_columns(i_ans)
        u = u_cols["state"][0]
        e = np.asarray(i_cols["embedding"], dtype=np.float32)  # (C, D)
        col = {c: np.asarray(i_cols[c], dtype=np.float64) for c in STATS_COLUMNS}
        s = stats_features(col["count_1c"], col["count_7c"], col["trend"], col["mean_rating"])
        row = {
            "u": u,
            "e": e.tolist(),
            "p": np.zeros_like(e).tolist(),
            "hit": [0.0] * len(e),
            "s": s.tolist(),
        }
        out = await post_json(session, f"{mlflow_url}/invocations", {"dataframe_records": [row]})
        if len(out.get("predictions", [])) != 1:
            raise HTTPStatusError(f"bad mlflow answer: {str(out)[:200]}")
        scores = np.asarray(out["predictions"][0])
        _top = [cands[i] for i in np.argsort(-scores, kind="stable")[:K]]
        t2 = time.perf_counter()
        parts.setdefault("feast_ms", []).append((t1 - t) * 1000)
        parts.setdefault("mlflow_ms", []).append((t2 - t1) * 1000)
        return None

    return call


# ---------------------------------------------------------------------------------------- metrics


async def scrape(url: str) -> dict[tuple[str, str], float]:
    """specrec_stage_seconds samples from /metrics, keyed by (sample name, stage|le)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "specrec_stage_seconds":
            continue
        for s in family.samples:
            out[(s.name, s.labels["stage"] + "|" + s.labels.get("le", ""))] = s.value
    return out


def stage_summary(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Per-stage count, mean and bucket-bound p50/p99 (ms) of the requests between two scrapes."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    stages = sorted({key.split("|")[0] for (_, key) in delta})
    out: dict[str, Any] = {}
    for stage in stages:
        count = delta.get(("specrec_stage_seconds_count", stage + "|"), 0.0)
        total = delta.get(("specrec_stage_seconds_sum", stage + "|"), 0.0)
        buckets = sorted(
            (float(key.split("|")[1]), v)
            for (name, key), v in delta.items()
            if name == "specrec_stage_seconds_bucket" and key.split("|")[0] == stage
        )
        if count <= 0:
            continue
        out[stage] = {
            "count": int(count),
            "mean_ms": round(total / count * 1000, 3),
            "p50_le_ms": _bucket_bound(buckets, 0.5 * count),
            "p99_le_ms": _bucket_bound(buckets, 0.99 * count),
        }
    return out


def _bucket_bound(buckets: list[tuple[float, float]], rank: float) -> float | None:
    """Upper bound (ms) of the first cumulative bucket holding `rank` observations (None: +Inf)."""
    for le, cum in buckets:
        if cum >= rank:
            return None if le == float("inf") else round(le * 1000, 3)
    return None


# ---------------------------------------------------------------------------------------- variants


def serving_bundle() -> tuple[str, str]:
    """bundle_id and specrec-scorer version of specrec-bundle@serving right now."""
    import mlflow

    mlflow.set_tracking_uri(TRACKING_URI)
    version = mlflow.MlflowClient().get_model_version_by_alias("specrec-bundle", "serving")
    return str(version.tags["bundle_id"]), str(version.tags.get("part_scorer", ""))


def serving_inputs() -> tuple[list[int], str, dict[int, list[int]], str]:
    """User ids, the serving bundle id, each user's 200 candidates (as the scorer retrieves them), and
    the bundle's scorer version."""
    sys.path.insert(0, str(ROOT))
    import faiss

    from specrec.config import load_config
    from specrec.io import read_parquet
    from specrec.nearline.store import open_store
    from specrec.online.serving_state import load_items, load_user_snapshot

    bundle_id, scorer_version = serving_bundle()
    if not scorer_version:
        raise SystemExit(f"bundle {bundle_id} has no scorer part: run `specrec scorer train` first")
    cfg = load_config(ROOT / "params.yaml")
    store = open_store(cfg)
    catalogue = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    users = read_parquet(cfg.path(cfg.paths.prepared) / "users.parquet", "prepared users")
    ids, emb = load_items(store, catalogue, bundle_id)
    snapshot = load_user_snapshot(store, users["user_id"].astype(int).tolist(), bundle_id)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    user_ids = sorted(snapshot)
    _, rows = index.search(np.stack([snapshot[u] for u in user_ids]), CANDIDATES)
    candidates = {u: [int(ids[r]) for r in rr if r >= 0] for u, rr in zip(user_ids, rows, strict=True)}
    return user_ids, bundle_id, candidates, scorer_version


def _find_key(tree: Any, key: str) -> Any:
    """First value of `key` anywhere in a nested dict."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def servers_for(
    variant: str, params: Path, scorer_version: str, env: dict[str, str] | None = None
) -> list[Server]:
    """The server subprocesses a variant needs (`env`: extra environment of every server)."""
    env = env or {}
    if variant in ("specrec", "sequential"):
        cmd = [str(BIN / "specrec"), "serve", "--params", str(params)]
        if variant == "sequential":
            cmd.append("--sequential")
        return [Server(variant, cmd, ["/healthz", "/readyz"], env=dict(env))]
    feast_cmd = [str(BIN / "feast"), "-c", "features", "serve"]
    if variant == "feast_mlflow_norecycle":  # gunicorn's worker recycling (default ~1000 requests) off
        feast_cmd += ["--max-requests", "0"]
    feast = Server("feast", feast_cmd, ["/health"], env=dict(env))
    model = Server(
        "mlflow",
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/specrec-scorer/{scorer_version}",
            "--env-manager",
            "local",
            "--workers",
            "1",
        ],
        ["/ping"],
        env={**env, "MLFLOW_TRACKING_URI": TRACKING_URI},
    )
    return [feast, model]


async def bench_variant(variant: str, args: argparse.Namespace, inputs: tuple[Any, ...]) -> dict[str, Any]:
    """Start the variant's servers, warm up, run every load, stop the servers; results per load."""
    users, bundle_id, candidates, scorer_version = inputs
    env = dict(kv.split("=", 1) for kv in args.server_env)
    servers = servers_for(variant, args.params, scorer_version, env)
    result: dict[str, Any] = {"_commands": [s.command() for s in servers], "_stages": {}, "_parts": {}}
    try:
        for s in servers:
            s.start(args.log_dir)
        await asyncio.gather(*(wait_ready(s, args.startup_timeout) for s in servers))
        if variant in COMPOSED:
            call = feast_mlflow_call(servers[0].url, servers[1].url, bundle_id, candidates)
        else:
            call = specrec_call(servers[0].url)
        await run_load(call, users, args.loads[0], args.warmup, args.max_inflight, args.timeout, seed=0)
        for i, rate in enumerate(args.loads):
            before = await scrape(servers[0].url) if variant not in COMPOSED else {}
            cpu0, client0 = [group_cpu_s(s) for s in servers], time.process_time()
            load = await run_load(
                call, users, rate, args.duration, args.max_inflight, args.timeout, seed=i + 1
            )
            result[_key(rate)] = load.summary()
            result[_key(rate)].update(
                cpu_per_request(servers, cpu0, time.process_time() - client0, len(load.latencies_ms))
            )
            if variant not in COMPOSED:
                result["_stages"][_key(rate)] = stage_summary(before, await scrape(servers[0].url))
            else:
                result["_parts"][_key(rate)] = _parts_summary(load.parts_ms)
            print(f"  {variant:<23} {rate:>6g} rps: {result[_key(rate)]}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run is reported, not faked
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {variant}: FAILED: {result['error']}", flush=True)
    finally:
        for s in servers:
            s.stop()
    return result


def _parts_summary(parts: dict[str, list[float]]) -> dict[str, Any]:
    """p50/p99 (ms) of each client-side part of a composed request."""
    return {
        name: {
            "p50_ms": round(float(np.percentile(v, 50)), 3),
            "p99_ms": round(float(np.percentile(v, 99)), 3),
        }
        for name, v in parts.items()
        if v
    }


def _key(rate: float) -> str:
    """JSON key of an offered load."""
    return f"{rate:g}"


# ----------------------------------------------------------------------------------------- report


def ratios(results: dict[str, dict[str, Any]], loads: list[float]) -> dict[str, Any]:
    """The issue's derived ratios and whether each target is met (None where a side was saturated)."""

    def p(variant: str, rate: float, q: str) -> float | None:
        """A percentile of a variant at a load, if measured."""
        return results.get(variant, {}).get(_key(rate), {}).get(q)

    def sustained(variant: str, rate: float) -> bool:
        """The variant answered the offered load: no errors and at least 95% of it achieved."""
        r = results.get(variant, {}).get(_key(rate), {})
        return bool(r) and r.get("errors", 1) == 0 and r.get("achieved_rps", 0.0) >= 0.95 * rate

    def ratio(a: float | None, b: float | None) -> float | None:
        """a / b, rounded, if both are known."""
        return round(a / b, 3) if a and b else None

    top = max(loads)
    spec99 = p("specrec", top, "p99_ms")
    par = {_key(r): ratio(p("specrec", r, "p50_ms"), p("sequential", r, "p50_ms")) for r in loads}
    par_ok = {
        _key(r): _verdict(par[_key(r)], 0.8, sustained("specrec", r), sustained("sequential", r))
        for r in loads
    }
    out: dict[str, Any] = {}
    five_x: dict[str, dict[str, bool | None]] = {}
    for composed in COMPOSED:  # p99 of the composition over ours, at every load
        per_load = {_key(r): ratio(p(composed, r, "p99_ms"), p("specrec", r, "p99_ms")) for r in loads}
        out[f"p99_ratio_{composed}_over_specrec"] = per_load
        five_x[composed] = {
            _key(r): _verdict(
                None if not per_load[_key(r)] else 1 / per_load[_key(r)],
                0.2,
                sustained("specrec", r),
                sustained(composed, r),
            )
            for r in loads
            if composed in results
        }
    return out | {
        "p50_ratio_parallel_over_sequential": par,
        "targets": {
            f"specrec_p99_le_10ms_at_{top:g}": None
            if spec99 is None
            else bool(spec99 <= 10.0 and sustained("specrec", top)),
            "composition_p99_ge_5x_specrec": five_x,
            "parallel_over_sequential_p50_le_0.8": par_ok,
            "note": "a side that did not sustain the offered load (errors or <95% achieved) loses; "
            "None: not measured, or neither side sustained it",
        },
    }


def _verdict(ratio: float | None, limit: float, ours_ok: bool, theirs_ok: bool) -> bool | None:
    """ratio (ours / theirs) <= limit, deciding by saturation first: the side that kept up wins."""
    if not (ours_ok or theirs_ok):
        return None
    if ours_ok != theirs_ok:
        return ours_ok
    return None if ratio is None else ratio <= limit


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared machine: other jobs ran on the same cores; client and servers share them too",
    }


def print_table(results: dict[str, dict[str, Any]], loads: list[float]) -> None:
    """The figures, one row per variant and load."""
    print(f"\n{'variant':<24}{'offered':>8}{'p50 ms':>10}{'p99 ms':>10}{'achieved':>10}{'errors':>8}")
    for variant in VARIANTS:
        res = results.get(variant, {})
        if "error" in res and not any(_key(r) in res for r in loads):
            print(f"{variant:<24}  FAILED: {res['error']}")
            continue
        for rate in loads:
            r = res.get(_key(rate))
            if r is None:
                continue
            print(
                f"{variant:<24}{rate:>8g}{_fmt(r['p50_ms']):>10}{_fmt(r['p99_ms']):>10}"
                f"{r['achieved_rps']:>10.1f}{r['errors']:>8}"
            )


def _fmt(x: float | None) -> str:
    """A latency for the table."""
    return "-" if x is None else f"{x:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--loads",
        type=float,
        nargs="+",
        default=[25.0, 50.0, 100.0, 200.0],
        help="Offered loads in requests/s, run in this order (default 25 50 100 200).",
    )
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds of measured load per offered rate.")
    ap.add_argument("--warmup", type=float, default=5.0, help="Seconds of unmeasured load at the first rate.")
    ap.add_argument("--max-inflight", type=int, default=64, help="Most requests outstanding at once.")
    ap.add_argument(
        "--timeout", type=float, default=5.0, help="Seconds from a request's due time to an error."
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="Variants to run (default all four).",
    )
    ap.add_argument("--startup-timeout", type=float, default=240.0, help="Seconds to wait for a server.")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml for specrec serve.")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "serving.json",
        help="Where to write the results JSON.",
    )
    ap.add_argument(
        "--server-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Extra environment for every server (diagnostics, e.g. OMP_NUM_THREADS=1); default none.",
    )
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="Where the servers' logs go.")
    ap.add_argument("--quick", action="store_true", help="Smoke run: one load (200 rps), 5 s, 2 s warm-up.")
    args = ap.parse_args(argv)
    if args.quick:
        args.loads, args.duration, args.warmup = [200.0], 5.0, 2.0
    return args


async def amain(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run every variant in turn and assemble the results file."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):  # cancel, so every variant's finally stops its servers
        loop.add_signal_handler(sig, task.cancel)
    inputs = serving_inputs()
    results: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/serving.py", *argv]),
        "machine": machine(),
        "serving_bundle_at_start": inputs[1],
    }
    commands, stages, parts = {}, {}, {}
    for variant in args.variants:
        print(f"{variant}: starting", flush=True)
        res = await bench_variant(variant, args, inputs)
        commands[variant], stages[variant], parts[variant] = (
            res.pop("_commands"),
            res.pop("_stages"),
            res.pop("_parts"),
        )
        results[variant] = res
    results["serving_bundle_at_end"] = serving_bundle()[0]
    if results["serving_bundle_at_end"] != inputs[1]:
        results["warning"] = "specrec-bundle@serving moved during the run: the figures mix bundles"
    results.update(ratios(results, args.loads))
    results["setup"] = {
        "endpoint": "POST /recommend {user_id, k: 10}; server retrieves 200 candidates (default)",
        "loop": "open-loop at the offered rate, bounded in-flight; latency from each request's due time",
        "loads_rps": args.loads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_inflight": args.max_inflight,
        "timeout_s": args.timeout,
        "users": len(inputs[0]),
        "feast_mlflow": (
            f"the same thin scorer (specrec-scorer v{inputs[3]}) under mlflow models serve; Feast serve "
            f"for user_state and the {CANDIDATES} candidates' item_repr + item_stats; candidates "
            "precomputed by the client (retrieval not charged to the composition)"
        ),
        "servers": commands,
    }
    results["stages_from_metrics"] = {k: v for k, v in stages.items() if v}
    results["feast_mlflow_parts_client_side"] = {v: parts[v] for v in COMPOSED if parts.get(v)}
    return results


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.params = args.params if args.params.is_absolute() else (Path.cwd() / args.params).resolve()
    results = asyncio.run(amain(args, argv))
    print_table(results, args.loads)
    print(
        json.dumps(
            {k: v for k, v in results.items() if k.startswith(("p99_ratio", "p50_ratio", "targets"))},
            indent=1,
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
