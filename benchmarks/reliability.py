"""Reliability benchmark: faults, fuzzing and a soak against real processes on loopback.

Everything runs in a tiny project of its own in a temp folder (the shipped data, a small FM trained and
registered in the folder's own MLflow store, a copy of the Feast repo), so the repo's stores are never
touched. Sections (all by default, or `--sections a,b`):

- `fuzz`: schemathesis against the running scorer's /openapi.json (`specrec serve`, embedded profile),
  positive and negative cases of every operation, every response checked against the schema (status
  code, content type, headers, body; negative input must be refused, valid input accepted).
- `redis_kill`: the scorer on the production profile (Redis online store, AOF persistence) under an
  open-loop load; `kill -9` of redis-server midway, restarted after `--redis-down-s`; counts errors and
  degraded answers and the time from Redis answering again (and from the restart command) to the first
  non-degraded answer.
- `sigkill_materialize`: `specrec nearline items` for a new bundle, SIGKILLed after a few batches, then
  rerun; the serving alias is polled throughout (it must never point at the incomplete bundle) and every
  item row of the new bundle is read back from the online store afterwards.
- `soak`: `specrec serve` (embedded profile) at a fixed offered load for `--soak-seconds` (600 by
  default) after a 10 s warm-up at the same load: errors, resident memory growth of the server process
  from the end of the first minute to the end, client-side p99 of the first and the last minute.
- `postgres_restart`: a second tiny project whose MLflow store is a PostgreSQL of our own (Debian's
  postgresql, a cluster in a temp folder on a free port); the Prefect flow `materialize_item_embeddings`
  runs while PostgreSQL is stopped (from the flow's first written batch until 4 s after its last) and
  started again; the flow's final state and the retries Prefect logged. A section that cannot run (no
  PostgreSQL installed, say) is recorded as null with a `<section>_reason`.

The load is open-loop (request i is due at t0 + i / rate; latency counts from the due time, so queueing
in the client is charged, no coordinated omission); a request unanswered within `--timeout` or answered
with a non-200 status is an error. Results are merged into benchmarks/results/reliability.json (a
section not run keeps its previous figures); each section records the 1-minute load average of the
shared machine at its start and end.

    .venv/bin/python benchmarks/reliability.py                                   # everything, ~20 min
    .venv/bin/python benchmarks/reliability.py --sections fuzz,redis_kill,sigkill_materialize
    .venv/bin/python benchmarks/reliability.py --sections soak --soak-seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from specrec.services import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
WARMUP_S = 10.0  # the soak's load before measuring starts (imports, first faiss/torch calls, pools)
SECTIONS = ("fuzz", "redis_kill", "sigkill_materialize", "soak", "postgres_restart")
ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "FEAST_USAGE": "False",
}


def load_avg() -> float:
    """The 1-minute load average of the machine (shared: say it next to every figure)."""
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------ project


def build_project(folder: Path) -> Any:
    """A tiny but real project in `folder`: shipped data through ingest/prepare/split, a small FM trained
    and registered in the folder's own MLflow store, a copy of the Feast repo (as the tests' fixture)."""
    import yaml

    from specrec.config import PathsConfig, load_config
    from specrec.data import prepare, split
    from specrec.data.ingest import ingest
    from specrec.fm.train import train_fm
    from specrec.tracking import use_project_store

    cfg = load_config(ROOT / "params.yaml")
    paths = PathsConfig(**{f.name: f"data/{f.name}" for f in dataclasses.fields(PathsConfig)})
    train = dataclasses.replace(cfg.fm.train, max_epochs=2, batch_size=128)
    fm = dataclasses.replace(cfg.fm, dim=16, max_len=30, n_layers=1, train=train)
    data = dataclasses.replace(cfg.data, path=str(ROOT / cfg.data.path))
    cfg = dataclasses.replace(cfg, paths=paths, data=data, fm=fm, root=folder)
    shutil.copytree(ROOT / "features", folder / "features", ignore=shutil.ignore_patterns("__pycache__"))
    raw = dataclasses.asdict(cfg)
    raw.pop("root")
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    use_project_store(folder)
    ingest(cfg)
    prepare.run(cfg)
    split.run(cfg)
    train_fm(cfg, progress=False)
    return load_config(folder / "params.yaml")


def load_project(folder: Path) -> Any:
    """A project built earlier (--keep), with MLflow pointed at its store."""
    from specrec.config import load_config
    from specrec.tracking import use_project_store

    use_project_store(folder)
    return load_config(folder / "params.yaml")


def with_profile(cfg: Any, profile: str, write_batch_rows: int | None = None) -> tuple[Any, Path]:
    """The config on another profile (and Feast batch size), and its params file next to params.yaml."""
    import yaml

    from specrec.config import load_config

    raw = yaml.safe_load((cfg.root / "params.yaml").read_text())
    raw["profile"] = profile
    if write_batch_rows is not None:
        raw["feast"]["write_batch_rows"] = write_batch_rows
    path = cfg.root / f"params_{profile}_{write_batch_rows or 'default'}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path), path


def as_of_first(cfg: Any) -> Any:
    """The as_of of the clock's first cycle."""
    from specrec.clock import ReplayClock

    return ReplayClock.from_config(cfg.clock).cycle(1).as_of


def serve_new_bundle(cfg: Any, tag: str) -> Any:
    """Register a bundle (the champions, codebook part named `tag`), write its items and user states into
    the config's online store, and make it the serving bundle."""
    import mlflow
    from specrec.nearline import bundles
    from specrec.nearline.materialize import materialize_items
    from specrec.nearline.store import apply
    from specrec.nearline.user_state import update_user_state
    from specrec.tracking import experiment_id

    client, store, as_of = mlflow.MlflowClient(), apply(cfg), as_of_first(cfg)
    parts = bundles.champion_parts(client) | {"codebook": tag}
    bundle = bundles.register(client, parts, experiment_id(cfg.root, "materialize"))
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    update_user_state(cfg, as_of, bundle, store)
    bundles.promote_serving(client, bundle)
    return bundle


def promote(bundle: Any) -> None:
    """Make `bundle` the serving bundle again."""
    import mlflow
    from specrec.nearline import bundles

    bundles.promote_serving(mlflow.MlflowClient(), bundle)


def known_users(cfg: Any) -> list[int]:
    """Users with events before the first cycle's as_of (answers for them are neither cold nor empty)."""
    import pandas as pd

    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    return sorted(set(events[events["timestamp"] < as_of_first(cfg)]["user_id"].astype(int)))


# ------------------------------------------------------------------------------------------ servers


def wait_until(ready: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `ready` until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {seconds:.0f} s")


class Scorer:
    """`specrec serve` as a subprocess on a free loopback port."""

    def __init__(self, params: Path, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port, self.params = free_port(), params
        self.env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(params.parent)} | (env or {})
        self.log = log or params.parent / f"scorer_{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Scorer:
        import httpx

        cmd = [str(BIN / "specrec"), "serve", "--port", str(self.port), "--params", str(self.params)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 180, f"scorer ({self.log})")
        return self

    def rss_mb(self) -> float:
        """Resident memory of the server process (MB), from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def tracking_uri(root: Path) -> str:
    """The project's MLflow store (the same for this process and its subprocesses)."""
    from specrec.tracking import local_uri

    return local_uri(root)


# ------------------------------------------------------------------------------------------ load


@dataclasses.dataclass
class Shot:
    """One request of an open-loop run: when it was due (s after t0), its latency, what came back."""

    due: float
    latency_ms: float
    ok: bool
    degraded: bool = False


async def open_loop(
    url: str, users: list[int], rate: float, seconds: float, timeout: float = 2.0, max_inflight: int = 256
) -> tuple[float, list[Shot]]:
    """POST /recommend (k=10) at `rate` per second for `seconds`; return t0 (monotonic) and the shots."""
    import aiohttp

    shots: list[Shot] = []
    rng = np.random.default_rng(0)
    gate = asyncio.Semaphore(max_inflight)

    async def one(session: aiohttp.ClientSession, due: float, user: int) -> None:
        try:
            async with session.post(f"{url}/recommend", json={"user_id": user, "k": 10}) as r:
                body = await r.json() if r.status == 200 else {}
                ok = r.status == 200
        except Exception:  # noqa: BLE001 - a timeout or a refused connection is an error, counted
            ok, body = False, {}
        finally:
            gate.release()
        shots.append(Shot(due, (time.monotonic() - t0 - due) * 1000, ok, bool(body.get("degraded"))))

    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limits, connector=aiohttp.TCPConnector(limit=0)) as session:
        t0, tasks = time.monotonic(), []
        for i in range(int(rate * seconds)):
            due = i / rate
            await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            await gate.acquire()
            tasks.append(asyncio.create_task(one(session, due, int(users[rng.integers(len(users))]))))
        await asyncio.gather(*tasks)
    return t0, sorted(shots, key=lambda s: s.due)


def p99(shots: list[Shot]) -> float | None:
    """Client-side p99 latency (ms) of the answered shots."""
    answered = [s.latency_ms for s in shots if s.ok]
    return round(float(np.percentile(answered, 99)), 2) if answered else None


# ------------------------------------------------------------------------------------------ sections


def fuzz(url: str, cases: int) -> dict[str, Any]:
    """schemathesis on the server's /openapi.json: about `cases` generated cases spread over its
    operations (positive and negative; derandomized, so a rerun sends the same cases), every response
    checked; failures are counted, not raised."""
    import hypothesis
    import schemathesis
    from schemathesis.core.failures import Failure, FailureGroup, ServerError
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    fixed = [op for op in operations if not has_inputs(op)]  # one possible request each
    varied = [op for op in operations if has_inputs(op)]
    per_strategy = max(1, (cases - len(fixed)) // (2 * max(1, len(varied))))
    counts = {"cases": 0, "server_errors": 0, "schema_violations": 0}
    examples: list[str] = []

    def run(case: Any) -> None:
        counts["cases"] += 1
        try:
            case.call_and_validate(base_url=url, timeout=10)
        except (FailureGroup, Failure) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for failure in failures:
                key = "server_errors" if isinstance(failure, ServerError) else "schema_violations"
                counts[key] += 1
                if len(examples) < 10:
                    examples.append(f"{case.operation.label}: {failure.title} ({case.body!r})"[:300])

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    plan = [(op, modes[0], 1) for op in fixed] + [(op, m, per_strategy) for op in varied for m in modes]
    for op, mode, n in plan:
        test = hypothesis.given(op.as_strategy(generation_mode=mode))(run)
        hypothesis.settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )(test)()
    return counts | {"operations": len(operations), "failure_examples": examples}


def has_inputs(op: Any) -> bool:
    """Whether an operation takes a body or parameters (else it has exactly one possible request)."""
    return any(len(getattr(op, part)) for part in ("body", "query", "path_parameters", "headers"))


def run_fuzz(cfg: Any, cases: int) -> dict[str, Any]:
    """The fuzz section against `specrec serve` on the embedded profile."""
    scorer = Scorer(cfg.root / "params.yaml").start()
    try:
        return fuzz(scorer.url, cases)
    finally:
        scorer.stop()


def run_redis_kill(cfg: Any, rate: float, seconds: float, kill_at: float, down_s: float) -> dict[str, Any]:
    """Open-loop load on the scorer over Redis; kill -9 Redis at `kill_at` s, restart it `down_s` later."""
    redis_dir = cfg.root / "redis"
    redis_dir.mkdir(exist_ok=True)
    from specrec.services import RedisProcess  # AOF persistence, as a production Redis should run

    server = RedisProcess(redis_dir)
    from specrec.tracking import local_uri

    env = {  # Feast on Redis; the registries stay in the project's own SQLite files
        "SPECREC_REDIS": server.url,
        "SPECREC_FEAST_REGISTRY_URL": f"sqlite:///{cfg.root / 'reg.db'}",
        "MLFLOW_TRACKING_URI": local_uri(cfg.root),
    }
    os.environ.update(env)
    prod, params = with_profile(cfg, "production")
    server.start()
    serve_new_bundle(prod, "reliability-redis")
    scorer = Scorer(params, env).start()
    marks: dict[str, float] = {}

    def fault() -> None:
        time.sleep(kill_at)
        server.kill9()
        marks["killed"] = time.monotonic()
        time.sleep(down_s)
        marks["restart"] = time.monotonic()
        server.start()  # same port and folder: the AOF brings the rows back
        marks["back"] = time.monotonic()

    try:
        t = threading.Thread(target=fault, daemon=True)
        t.start()
        t0, shots = asyncio.run(open_loop(scorer.url, known_users(cfg), rate, seconds))
        t.join()
    finally:
        scorer.stop()
        server.stop()
    back = marks["back"] - t0
    after = [s for s in shots if s.due + s.latency_ms / 1000 >= back and s.ok and not s.degraded]
    recovered = min((s.due + s.latency_ms / 1000 for s in after), default=None)
    return {
        "requests": len(shots),
        "errors": sum(not s.ok for s in shots),
        "degraded": sum(s.degraded for s in shots),
        "recovery_s": None if recovered is None else round(recovered - back, 3),
        "recovery_from_restart_s": None if recovered is None else round(recovered - marks["restart"] + t0, 3),
        "rate_rps": rate,
        "seconds": seconds,
        "redis_down_s": round(marks["back"] - marks["killed"], 3),
        "degraded_before_kill": sum(s.degraded for s in shots if s.due < marks["killed"] - t0),
        "p99_ms": p99(shots),
    }


def read_embeddings(store: Any, items: list[int], bundle_id: str) -> list[Any]:
    """item_repr embeddings of these items of this bundle, as a plain Feast client reads them."""
    rows = [{"item_id": i, "bundle_id": bundle_id} for i in items]
    found = store.get_online_features(features=["item_repr:embedding"], entity_rows=rows).to_dict()
    return list(found["embedding"])


def run_sigkill_materialize(cfg: Any, batch_rows: int = 200, after_batches: int = 3) -> dict[str, Any]:
    """SIGKILL `specrec nearline items` of a new bundle midway, rerun it, check consistency and rows."""
    import pandas as pd

    import mlflow
    from specrec.nearline import bundles
    from specrec.nearline.store import apply, offline_dir
    from specrec.tracking import experiment_id

    client, store = mlflow.MlflowClient(), apply(cfg)
    old = bundles.serving(client) or serve_new_bundle(cfg, "reliability-sigkill-old")
    parts = bundles.champion_parts(client) | {"codebook": "reliability-sigkill-new"}
    new = bundles.register(client, parts, experiment_id(cfg.root, "materialize"))
    _, params = with_profile(cfg, cfg.profile, batch_rows)
    as_of = str(as_of_first(cfg).date())
    cmd = [str(BIN / "specrec"), "nearline", "items", "--as-of", as_of, "--bundle", new.bundle_id]
    cmd += ["--params", str(params)]
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(cfg.root)}
    seen_bad: list[str] = []  # serving alias observed on the new bundle while it was incomplete
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            now = bundles.serving(client)
            if now is not None and now.bundle_id == new.bundle_id and not bundles.is_complete(client, new):
                seen_bad.append(time.strftime("%H:%M:%S"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    folder = offline_dir(store, "item_repr") / f"bundle={new.bundle_id}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: len(list(folder.glob("*.parquet"))) >= after_batches or proc.poll() is not None,
        300,
        "the materialization's first batches",
    )
    killed_midway = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
    known = items[items["first_seen"].notna() & (items["first_seen"] < as_of_first(cfg))]["item_id"]
    known = known.astype(int).tolist()
    partial = sum(e is not None for e in read_embeddings(store, known, new.bundle_id))
    serving_after_kill = bundles.serving(client)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    stop.set()
    watcher.join()
    if rerun.returncode != 0:
        raise RuntimeError(f"the rerun failed: {rerun.stderr[-2000:]}")
    present = sum(e is not None for e in read_embeddings(store, known, new.bundle_id))
    old_whole = all(e is not None for e in read_embeddings(store, known, old.bundle_id))
    served = bundles.serving(client)
    consistent = (
        killed_midway
        and not seen_bad
        and serving_after_kill is not None
        and serving_after_kill.bundle_id == old.bundle_id
        and served is not None
        and served.bundle_id == new.bundle_id
        and old_whole
    )
    return {
        "consistent": bool(consistent),
        "rows_lost": len(known) - present,
        "items": len(known),
        "rows_before_kill": partial,
        "killed_midway": killed_midway,
        "serving_on_incomplete_bundle_seen": len(seen_bad),
        "old_bundle_whole": old_whole,
    }


def run_soak(cfg: Any, rate: float, seconds: float, log: Path | None) -> dict[str, Any]:
    """`specrec serve` at a fixed offered load for `seconds`; memory and latency at the start and end."""
    scorer = Scorer(cfg.root / "params.yaml", log=log).start()
    window = min(60.0, seconds / 3)
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not stop.is_set():
            rss.append((time.monotonic() - start, scorer.rss_mb()))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    users = known_users(cfg)
    try:
        asyncio.run(open_loop(scorer.url, users, rate, WARMUP_S))  # first-request costs, not counted
        sampler.start()
        _, shots = asyncio.run(open_loop(scorer.url, users, rate, seconds))
    finally:
        stop.set()
        sampler.join()
        scorer.stop()
    warm = [mb for t, mb in rss if t <= window][-1]  # after the first minute: caches and pools are built
    end = rss[-1][1]
    return {
        "seconds": seconds,
        "requests": len(shots),
        "errors": sum(not s.ok for s in shots),
        "rss_growth_pct": round(100 * (end - warm) / warm, 2),
        "p99_ms_first_min": p99([s for s in shots if s.due < window]),
        "p99_ms_last_min": p99([s for s in shots if s.due >= seconds - window]),
        "rate_rps": rate,
        "warmup_s": WARMUP_S,
        "window_s": window,
        "rss_mb_start": round(rss[0][1], 1),
        "rss_mb_after_first_min": round(warm, 1),
        "rss_mb_end": round(end, 1),
        "degraded": sum(s.degraded for s in shots),
        "p50_ms": round(float(np.percentile([s.latency_ms for s in shots if s.ok], 50)), 2),
    }


FLOW = """
import json, sys
from flows.materialize_item_embeddings import materialize_item_embeddings
state = materialize_item_embeddings(as_of=sys.argv[1], params=sys.argv[2], return_state=True)
print(json.dumps({"flow_state": state.type.value, "message": state.message}))
"""


def run_postgres_restart(pg_down_after_s: float = 4.0, batch_rows: int = 300) -> dict[str, Any]:
    """MLflow on PostgreSQL; the Prefect flow materialize_item_embeddings runs while PostgreSQL is stopped
    (from its first written batch until `pg_down_after_s` after its last) and started again."""
    import pandas as pd

    import mlflow
    from specrec.nearline import bundles
    from specrec.services import Postgres  # a throw-away cluster in a temp folder on a free port

    pg = Postgres()
    here, uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    folder = Path(tempfile.mkdtemp(prefix="specrec-reliability-pg-"))
    try:
        pg.create()
        os.environ["MLFLOW_TRACKING_URI"] = pg.url()
        os.chdir(folder)  # MLflow's default artifact root (./mlruns) is relative to the cwd
        cfg = build_project(folder)
        _, params = with_profile(cfg, cfg.profile, batch_rows)
        bundle = bundles.Bundle(bundles.champion_parts(mlflow.MlflowClient()))
        items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
        n_parts = -(-int((items["first_seen"] < as_of_first(cfg)).sum()) // batch_rows)
        from specrec.nearline.store import apply, offline_dir

        parts = offline_dir(apply(cfg), "item_repr") / f"bundle={bundle.bundle_id}"
        env = os.environ | {"PREFECT_HOME": str(folder / "prefect"), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", FLOW, str(as_of_first(cfg)), str(params)]
        proc = subprocess.Popen(cmd, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        count = lambda: len(list(parts.glob("*.parquet")))  # noqa: E731
        wait_until(lambda: count() > 0 or proc.poll() is not None, 300, "the flow's first batch")
        pg.stop()
        stopped = time.monotonic()
        wait_until(lambda: count() >= n_parts or proc.poll() is not None, 300, "the flow's last batch")
        time.sleep(pg_down_after_s)
        pg.start()
        down = time.monotonic() - stopped
        out, err = proc.communicate(timeout=600)
        result = json.loads(out.decode().strip().splitlines()[-1]) if proc.returncode == 0 else {}
        retries = [line for line in err.decode().splitlines() if "Retry " in line]  # Prefect logs each one
        served = bundles.serving(mlflow.MlflowClient())
        return {
            "flow_state": result.get("flow_state", f"process exit {proc.returncode}"),
            "pg_down_s": round(down, 2),
            "task_retries_logged": len(retries),
            "retry_log": [line[-220:] for line in retries[:4]],
            "serving_bundle_is_new": served is not None and served.bundle_id == bundle.bundle_id,
            "batches": n_parts,
        }
    finally:
        os.chdir(here)
        pg.remove()
        shutil.rmtree(folder, ignore_errors=True)
        if uri is not None:  # the other sections' store again
            os.environ["MLFLOW_TRACKING_URI"] = uri
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)


# ------------------------------------------------------------------------------------------ main


def timed(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; add the wall time and the machine's load average around it; print it."""
    load0, t = load_avg(), time.perf_counter()
    print(f"== {name} (load average {load0}) ...", flush=True)
    out = run() | {"wall_s": round(time.perf_counter() - t, 1), "load_avg_1m": [load0, load_avg()]}
    print(f"   {name}: {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"Comma-separated of {SECTIONS}.")
    ap.add_argument("--fuzz-cases", type=int, default=1200, help="Generated cases over all operations.")
    ap.add_argument("--rate", type=float, default=50.0, help="Offered load (req/s) of load sections.")
    ap.add_argument("--redis-seconds", type=float, default=30.0, help="Length of the redis_kill load.")
    ap.add_argument("--redis-kill-at", type=float, default=10.0, help="When Redis is killed (s into it).")
    ap.add_argument("--redis-down-s", type=float, default=5.0, help="How long Redis stays down.")
    ap.add_argument("--soak-seconds", type=float, default=600.0, help="Length of the soak.")
    ap.add_argument("--keep", action="store_true", help="Keep the temp project (its path is printed).")
    ap.add_argument("--project", type=Path, help="Reuse a project kept by --keep instead of building one.")
    args = ap.parse_args(argv)
    for key, value in ENV.items():  # before any library that reads them is imported
        os.environ.setdefault(key, value)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from {SECTIONS}.")
    if args.soak_seconds < 30 or args.fuzz_cases < 10:
        raise SystemExit("--soak-seconds must be >= 30 and --fuzz-cases >= 10.")

    folder = args.project or Path(tempfile.mkdtemp(prefix="specrec-reliability-"))
    print(f"project in {folder} (load average {load_avg()}, {os.cpu_count()} CPUs)", flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    try:
        needs_project = set(chosen) - {"postgres_restart"}  # that one builds a project on PostgreSQL
        cfg = (load_project(folder) if args.project else build_project(folder)) if needs_project else None
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "fuzz": lambda: run_fuzz(cfg, args.fuzz_cases),
            "redis_kill": lambda: run_redis_kill(
                cfg, args.rate, args.redis_seconds, args.redis_kill_at, args.redis_down_s
            ),
            "sigkill_materialize": lambda: run_sigkill_materialize(cfg),
            "soak": lambda: run_soak(cfg, args.rate, args.soak_seconds, None),
            "postgres_restart": run_postgres_restart,
        }
        embedded = None
        for name in chosen:
            if name not in ("redis_kill", "postgres_restart"):  # the embedded store's bundle (others move it)
                embedded = embedded or serve_new_bundle(cfg, "reliability")
                promote(embedded)
            try:
                results[name] = timed(name, runs[name]) | {"command": command(argv)}
                results.pop(f"{name}_reason", None)
            except (Exception, SystemExit) as exc:  # record why a section has no figures, run the rest
                print(f"   {name} failed: {exc!r}", flush=True)
                results[name], results[f"{name}_reason"] = None, f"not measured: {exc!r}"[:500]
    finally:
        if not (args.keep or args.project):
            shutil.rmtree(folder, ignore_errors=True)
    results["command"] = all_sections(command(argv))  # each section keeps the exact command it ran with
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def all_sections(cmd: str) -> str:
    """The command without --sections: what reproduces every section with the same settings."""
    words, out = shlex.split(cmd), []
    for word in words:
        if out and out[-1] == "--sections":
            out.pop()
        elif not word.startswith("--sections="):
            out.append(word)
    return shlex.join(out)


def command(argv: list[str] | None) -> str:
    """The command line that produced the figures (relative to the repo root)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([".venv/bin/python", "benchmarks/reliability.py", *args])


if __name__ == "__main__":
    main()
