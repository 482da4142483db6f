"""Shared fixtures: the repo root, the shared benchmark data, and a project config in a temp folder."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from specrec.config import PROFILE_ENV, Config, PathsConfig, ServicesConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The profile the suite runs on: `SPECREC_PROFILE=production pytest tests/integration` (make test-production)
# starts a throw-away PostgreSQL and Redis for the session and gives every test project its own databases.
PROFILE = os.environ.get(PROFILE_ENV) or "embedded"


def require(condition: bool, what: str) -> None:
    """Skip locally when a prerequisite is missing; in CI (CI=true) fail instead, saying what is missing."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing in CI; the test cannot run without it.")
    pytest.skip(f"{what} is missing")


def benchmark_module(name: str) -> Any:
    """benchmarks/<name>.py as a module (benchmarks/ holds scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{name}_bench", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repo (benchmark files that are never committed)."""
    require(SHARED_DATA.is_dir(), f"shared data folder {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def project_cfg(tmp_path: Path) -> Config:
    """The repo's params.yaml with every output path moved under a temp folder."""
    cfg = load_config(ROOT / "params.yaml")
    paths = PathsConfig(**{f.name: str(tmp_path / f.name) for f in dataclasses.fields(PathsConfig)})
    return dataclasses.replace(cfg, paths=paths)


# what use_project_store and open_store set in the process environment
MLFLOW_URI_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "SPECREC_ARTIFACT_ROOT",
    "SPECREC_REDIS",
    "SPECREC_FEAST_REGISTRY_URL",
)


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put the MLflow URI variables back as they were (unset ones unset again)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_mlflow_uri() -> object:
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI; keep one test's store out of the next."""
    saved = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    yield
    _restore_env(saved)


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_uri_per_module() -> object:
    """The same for module- and session-scoped fixtures (a project built once per module points MLflow at
    its store): specrec.tracking honours an inherited MLFLOW_TRACKING_URI, so a leaked one would send every
    later module's project to this module's store."""
    saved = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    yield
    _restore_env(saved)


class ProductionServers:
    """A PostgreSQL cluster and a Redis of the session's own on loopback; each project gets fresh databases
    (Feast registry, MLflow) and a Redis database number, so projects never see each other's rows."""

    def __init__(self, folder: Path) -> None:
        from specrec.services import Postgres, RedisProcess

        self.pg = Postgres()  # its own temp folder: pytest's are private to root, the server runs as postgres
        self.pg.create(("prefect",))
        memory_only = ("--save", "", "--appendonly", "no", "--databases", "256")
        self.redis = RedisProcess(folder / "redis", memory_only)
        (folder / "redis").mkdir(exist_ok=True)
        self.redis.start()
        self.numbers = itertools.count(1)

    def services_for(self, root: Path) -> ServicesConfig:
        """Fresh stores for the project in `root`."""
        n = next(self.numbers)
        require(n < 256, "a free Redis database number (more than 255 test projects)")
        self.pg.create((f"feast_{n}", f"mlflow_{n}"))
        return ServicesConfig(
            redis=f"{self.redis.url},db={n}",
            feast_registry_url=self.pg.url(f"feast_{n}"),
            mlflow_tracking_uri=self.pg.url(f"mlflow_{n}"),
            artifact_root=str(root / "mlflow" / "artifacts"),
            prefect_database_url=self.pg.url("prefect").replace("+psycopg", "+asyncpg"),
        )

    def clone(self, source: ServicesConfig, root: Path, feast: bool) -> ServicesConfig:
        """Fresh stores for a copy of a project in `root`: its MLflow database copied (as copying the folder
        copies an embedded project's SQLite store), its Feast registry and Redis rows too when `feast`."""
        import psycopg
        import redis

        fresh = self.services_for(root)
        pairs = [(source.mlflow_tracking_uri, fresh.mlflow_tracking_uri)]
        if feast:
            pairs.append((source.feast_registry_url, fresh.feast_registry_url))
        dsn = f"host=127.0.0.1 port={self.pg.port} user=specrec dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            for old, new in pairs:
                src, dst = str(old).rsplit("/", 1)[1], str(new).rsplit("/", 1)[1]
                # a template must have no other sessions; the clients' pools reconnect (pool_pre_ping)
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (src,)
                )
                c.execute(f'DROP DATABASE "{dst}"')
                c.execute(f'CREATE DATABASE "{dst}" TEMPLATE "{src}"')
        if feast:
            src_db, dst_db = (int(str(v).rsplit("db=", 1)[1]) for v in (source.redis, fresh.redis))
            client = redis.Redis(host="127.0.0.1", port=self.redis.port, db=src_db)
            for key in client.scan_iter(count=1000):
                client.copy(key, key, destination_db=dst_db, replace=True)
        return fresh

    def stop(self) -> None:
        self.redis.stop()
        self.pg.remove()


SERVERS: ProductionServers | None = None


@pytest.fixture(scope="session", autouse=True)
def _production_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Start the production profile's servers for the session when the suite runs on that profile."""
    global SERVERS
    if PROFILE != "production":
        yield
        return
    from specrec.services import postgres_bin

    if postgres_bin() is None:
        pytest.exit("SPECREC_PROFILE=production needs PostgreSQL: `make system-deps` (as root)", returncode=2)
    SERVERS = ProductionServers(tmp_path_factory.mktemp("servers"))
    yield
    SERVERS.stop()
    SERVERS = None


def on_test_profile(cfg: Config) -> Config:
    """`cfg` on the suite's profile: on production, a project without servers of its own gets fresh ones."""
    if PROFILE != "production":
        return cfg
    assert SERVERS is not None, "the session's production servers are not running"
    services = cfg.services
    if services.mlflow_tracking_uri is None:
        services = SERVERS.services_for(cfg.root)
    return dataclasses.replace(cfg, profile="production", services=services)


def write_params(cfg: Config, path: Path) -> Config:
    """Write a Config back to YAML (on the suite's profile) so subprocesses and flows load the same settings;
    returns the config as loaded from it."""
    import yaml

    raw: dict[str, Any] = dataclasses.asdict(on_test_profile(dataclasses.replace(cfg, root=path.parent)))
    raw.pop("root")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    for key in MLFLOW_URI_VARS:  # the project's own stores from here on, not those an earlier test pointed at
        os.environ.pop(key, None)
    return load_config(path)


def copy_project(cfg: Config, folder: Path, ignore: tuple[str, ...] = ()) -> Config:
    """Copy a test project's folder (minus `ignore` patterns) to `folder` and return the copy's config: on the
    production profile with stores of its own holding what the original's held, as the embedded profile's
    SQLite files do in the copied folder ("feast" in `ignore`: a fresh Feast registry and online store)."""
    import shutil

    shutil.copytree(cfg.root, folder, ignore=shutil.ignore_patterns("__pycache__", *ignore))
    copy = dataclasses.replace(cfg, root=folder)
    if PROFILE == "production":
        assert SERVERS is not None
        copy = dataclasses.replace(copy, services=SERVERS.clone(cfg.services, folder, "feast" not in ignore))
    return write_params(copy, folder / "params.yaml")


def prefect_database() -> str | None:
    """The database a test's Prefect server uses: its own SQLite (None) or the session's PostgreSQL."""
    if PROFILE != "production":
        return None
    assert SERVERS is not None
    return SERVERS.pg.url("prefect").replace("+psycopg", "+asyncpg")


@contextmanager
def prefect_harness() -> Iterator[None]:
    """A Prefect server of the test's own for the block: Prefect's test harness (SQLite) on the embedded
    profile; on production the same harness with the server's database on the session's PostgreSQL."""
    from prefect.testing.utilities import prefect_test_harness

    if PROFILE != "production":
        with prefect_test_harness(server_startup_timeout=180):
            yield
        return
    import prefect.settings
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    url = prefect_database()
    original = temporary_settings

    def on_postgres(updates: dict[Any, Any] | None = None, **kwargs: Any) -> Any:
        """The harness's settings with its SQLite database swapped for the session's PostgreSQL."""
        if updates and PREFECT_SERVER_DATABASE_CONNECTION_URL in updates:
            updates = updates | {PREFECT_SERVER_DATABASE_CONNECTION_URL: url}
        return original(updates=updates, **kwargs)

    prefect.settings.temporary_settings = on_postgres  # the harness looks it up at call time
    try:
        with prefect_test_harness(server_startup_timeout=180):
            yield
    finally:
        prefect.settings.temporary_settings = original
