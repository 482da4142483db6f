"""A local Prefect server (API and UI) as a child process: started, waited for, and stopped with its children.

Used by `make flows` (python -m flows.deploy --server) and by the deployment integration test. The server's
home (its SQLite database, profiles and logs) is a folder of the caller's choosing, so it never shares
~/.prefect with another Prefect on the machine. The UI is told the same host and port as the API
(PREFECT_UI_API_URL); otherwise it shows "Can't connect to Server API".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from specrec.errors import SpecrecError


def api_url(host: str, port: int) -> str:
    """The API URL of a server on host:port."""
    return f"http://{host}:{port}/api"


def server_env(home: Path, host: str, port: int, database_url: str | None = None) -> dict[str, str]:
    """The environment of the server process: its home, its address, the UI's API URL, no telemetry, and
    its database (the production profile's PostgreSQL; SQLite under its home when None)."""
    url = api_url(host, port)
    database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    return dict(os.environ) | database | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_UI_API_URL": url,
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) != 0


def healthy(url: str) -> bool:
    """Whether the API at `url` answers /health."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and the processes it started (its own session), politely first."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def running(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    timeout_s: float = 120,
    database_url: str | None = None,
) -> Iterator[str]:
    """Run `prefect server start` until the block ends; yields the API URL once /api/health answers.

    The server's output goes to <home>/server.log (the error message quotes its tail).
    """
    if not port_free(host, port):
        raise SpecrecError(
            f"port {port} on {host} is in use (another Prefect server?); stop it or pick another port "
            "(make flows PREFECT_PORT=4300)."
        )
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", host, "--port", str(port)],
            env=server_env(home, host, port, database_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the serve process only; it stops the server after
        )
    url = api_url(host, port)
    try:
        wait_until_healthy(proc, url, timeout_s, log)
        yield url
    finally:
        stop(proc)


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> None:
    """Poll /api/health until it answers; fail with the log's tail if the server exits or times out."""
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            exited = proc.poll() is not None
            why = f"exited with code {proc.returncode}" if exited else f"was not up after {timeout_s:.0f} s"
            raise SpecrecError(f"the Prefect server at {url} {why}; the end of {log}:\n{tail}")
        time.sleep(0.5)
