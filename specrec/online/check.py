"""A smoke check of the scorer as a user sees it: a real server on loopback and a real HTTP client."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import uvicorn

from specrec.config import Config
from specrec.io import read_parquet
from specrec.online.app import build_scorer
from specrec.online.service import create_app
from specrec.services import free_port


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port in a thread; yield its URL; stop it after."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def check(cfg: Config, n_requests: int = 50) -> dict[str, float]:
    """Serve the current bundle, send n_requests /recommend calls for known users, print a summary."""
    scorer, watch = build_scorer(cfg)
    with serve_in_thread(create_app(scorer, watch)) as url, httpx.Client(base_url=url, timeout=10) as client:
        users = read_parquet(cfg.path(cfg.paths.prepared) / "users.parquet", "prepared users")[
            "user_id"
        ].tolist()
        latencies, first = [], None
        for k in range(n_requests):
            t = time.perf_counter()
            body = client.post("/recommend", json={"user_id": int(users[k % len(users)]), "k": 10}).json()
            latencies.append((time.perf_counter() - t) * 1000)
            first = first or body
    p50, p99 = np.percentile(latencies, [50, 99])
    print(
        f"scorer on {url}, bundle {scorer.state.bundle.bundle_id}: {n_requests} requests, "
        f"client-side p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(f"example answer: {first}")
    return {"p50_ms": float(p50), "p99_ms": float(p99)}
