"""Local Redis and PostgreSQL on loopback for the production profile (development and CI).

`python -m specrec.services start|stop|env` (`make services`, `make services-stop`) runs them from Debian's
packages with their data under .services/ and prints the environment the production profile reads.
Tests and benchmarks start throw-away clusters with `Postgres` (a temp folder on a free port).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specrec.config import Config

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".services"
REDIS_PORT = int(os.environ.get("SPECREC_SERVICES_REDIS_PORT", "16379"))
PG_PORT = int(os.environ.get("SPECREC_SERVICES_PG_PORT", "15432"))
DATABASES = ("feast", "mlflow", "prefect")
USER = "specrec"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    """Something listens on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin folder, or None when postgresql is not installed."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


class Postgres:
    """A PostgreSQL cluster of our own (Debian's binaries) in `folder` on a loopback port, run as the
    `postgres` user when we are root (the server refuses to run as root); trust auth for user specrec."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        found = postgres_bin()
        if found is None:
            raise SystemExit("PostgreSQL not found: install postgresql (`make system-deps` as root).")
        self.bin, self.port = found, port or free_port()
        self.folder = folder or Path(tempfile.mkdtemp(prefix="specrec-pg-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(self.folder, "postgres")

    def url(self, database: str = "mlflow") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        return subprocess.run([*prefix, str(self.bin / tool), *args], check=check, capture_output=True)

    def running(self) -> bool:
        if not self.data.is_dir():
            return False
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def create(self, databases: tuple[str, ...] = ("mlflow",)) -> None:
        """initdb when the cluster does not exist yet, start it, create the missing databases."""
        if not (self.data / "PG_VERSION").is_file():
            self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust")
        if not self.running():
            self.start()
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            have = {row[0] for row in c.execute("SELECT datname FROM pg_database")}
            for name in databases:
                if name not in have:
                    c.execute(f'CREATE DATABASE "{name}"')

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        try:
            log = str(self.folder / "server.log")
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"PostgreSQL did not start on 127.0.0.1:{self.port} ({exc.stderr.decode().strip()[-300:]}); "
                f"see {self.folder / 'server.log'}"
            ) from None

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisProcess:
    """A throw-away redis-server on a free loopback port (tests and benchmarks), in the foreground so it can
    be stopped, shut down with a save, or killed; `persistence` are its redis-server options."""

    AOF = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
    SNAPSHOT = ("--save", "3600 1", "--appendonly", "no")

    def __init__(self, folder: Path, persistence: tuple[str, ...] = AOF) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install Debian's redis-server (`make system-deps`).")
        self.binary, self.folder, self.port, self.persistence = binary, folder, free_port(), persistence
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """host:port, as SPECREC_REDIS takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait until it answers PING."""
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            + list(self.persistence),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on {self.url}")

    def shutdown_save(self) -> None:
        """SHUTDOWN SAVE: write the dataset to disk, then exit."""
        import redis

        if self.proc is None:
            return
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
            redis.Redis(host="127.0.0.1", port=self.port).shutdown(save=True)
        self.proc.wait(timeout=30)
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL, as a crashed host would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def redis_env() -> str:
    return f"127.0.0.1:{REDIS_PORT}"


def postgres_url(database: str, driver: str = "psycopg") -> str:
    """The URL of a `make services` database (trust auth for user specrec on loopback)."""
    return f"postgresql+{driver}://{USER}@127.0.0.1:{PG_PORT}/{database}"


@dataclass(frozen=True)
class Endpoints:
    """The production profile's servers, resolved: params.yaml `services:`, else the environment variable,
    else what `make services` runs on loopback."""

    redis: str
    feast_registry_url: str
    mlflow_tracking_uri: str
    artifact_root: str
    prefect_database_url: str

    def feast_env(self) -> dict[str, str]:
        """The variables features/feature_store.production.yaml substitutes."""
        return {"SPECREC_REDIS": self.redis, "SPECREC_FEAST_REGISTRY_URL": self.feast_registry_url}

    def rows(self) -> list[tuple[str, str]]:
        """(what, where) for `specrec profile`, passwords hidden."""
        hide = re.compile(r"(://[^:/@]+:)[^@]+@")
        return [(k, hide.sub(r"\1***@", str(v))) for k, v in dataclasses.asdict(self).items()]


def endpoints(cfg: Config) -> Endpoints:
    """Resolve where the production profile's servers are for `cfg`."""
    s = cfg.services

    def pick(value: str | None, env: str, default: str) -> str:
        return value or os.environ.get(env) or default

    artifacts = pick(s.artifact_root, "SPECREC_ARTIFACT_ROOT", "mlflow/artifacts")
    if "://" not in artifacts:
        artifacts = str(cfg.path(artifacts).resolve())
    return Endpoints(
        redis=pick(s.redis, "SPECREC_REDIS", redis_env()),
        feast_registry_url=pick(s.feast_registry_url, "SPECREC_FEAST_REGISTRY_URL", postgres_url("feast")),
        mlflow_tracking_uri=pick(s.mlflow_tracking_uri, "MLFLOW_TRACKING_URI", postgres_url("mlflow")),
        artifact_root=artifacts,
        prefect_database_url=pick(
            s.prefect_database_url,
            "PREFECT_API_DATABASE_CONNECTION_URL",
            postgres_url("prefect", "asyncpg"),
        ),
    )


def check_postgres(what: str, key: str, url: str, timeout_s: float = 3.0) -> None:
    """Raise StoreUnreachable naming `services.<key>` when the PostgreSQL in `url` refuses connections.

    MLflow's client retries a refused connection with backoff for about two minutes before it fails; a
    TCP connect with a short timeout tells the user at once. URLs that are not PostgreSQL over TCP pass.
    """
    from sqlalchemy.engine import make_url

    from specrec.errors import StoreUnreachable

    if not url.startswith("postgresql"):
        return
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "127.0.0.1")  # libpq's ?host= may name a socket
    port = parsed.port or 5432
    if host.startswith("/"):  # a Unix socket folder: nothing to probe over TCP
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise StoreUnreachable(
            f"{what}: PostgreSQL at {host}:{port} (services.{key}) does not accept connections "
            f"({err.strerror or err}); start it (`make services` runs one on loopback) or point "
            f"services.{key} at a running server."
        ) from None


def env_lines() -> list[str]:
    """The switch and the variables the production profile reads (Feast repo, MLflow, Prefect server)."""
    return [
        "export SPECREC_PROFILE=production",
        f"export SPECREC_REDIS={redis_env()}",
        f"export SPECREC_FEAST_REGISTRY_URL={postgres_url('feast')}",
        f"export MLFLOW_TRACKING_URI={postgres_url('mlflow')}",
        f"export PREFECT_API_DATABASE_CONNECTION_URL={postgres_url('prefect', 'asyncpg')}",
    ]


def start_redis() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install redis-server (`make system-deps` as root).")
    if port_open(REDIS_PORT):
        return f"Redis already up on {redis_env()}"
    folder = STATE / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [binary, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--dir", str(folder), "--daemonize", "yes"]
        + ["--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log")]
        + ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
        check=True,
    )
    for _ in range(100):
        if port_open(REDIS_PORT):
            return f"Redis started on {redis_env()} (data {folder})"
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not answer on {redis_env()}; see {folder / 'redis.log'}")


def start() -> None:
    print(start_redis())
    pg = Postgres(STATE / "postgres", PG_PORT)
    if pg.running():
        pg.create(DATABASES)  # databases only, when missing
        print(f"PostgreSQL already up on 127.0.0.1:{PG_PORT}")
    elif port_open(PG_PORT):
        raise SystemExit(f"port {PG_PORT} is taken: set SPECREC_SERVICES_PG_PORT to a free port")
    else:
        pg.create(DATABASES)
        print(f"PostgreSQL started on 127.0.0.1:{PG_PORT}, databases {', '.join(DATABASES)} ({pg.folder})")
    print('\nexport these for the production profile (or: eval "$(python -m specrec.services env)"):')
    print("\n".join(env_lines()))


def stop() -> None:
    pid = STATE / "redis" / "redis.pid"
    if pid.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid.read_text().strip()), 15)
        print(f"Redis on {redis_env()} stopped")
    else:
        print("Redis: not started by make services")
    if postgres_bin() is not None and (STATE / "postgres" / "data").is_dir():
        pg = Postgres(STATE / "postgres", PG_PORT)
        if pg.running():
            pg.stop()
            print(f"PostgreSQL on 127.0.0.1:{PG_PORT} stopped")
            return
    print("PostgreSQL: not running")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specrec.services", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "env"))
    args = parser.parse_args(argv)
    if args.command == "start":
        start()
    elif args.command == "stop":
        stop()
    else:
        print("\n".join(env_lines()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
