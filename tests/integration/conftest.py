"""A tiny but real project in a temp folder: the shipped data through the pipeline, a small FM trained and
registered in the folder's own MLflow store, and a copy of the Feast repo."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from specrec.config import Config, PathsConfig, load_config
from specrec.data import prepare, split
from specrec.data.ingest import ingest
from specrec.fm.train import TrainOutcome, train_fm
from specrec.tracking import use_project_store
from tests.conftest import write_params


@dataclasses.dataclass(frozen=True)
class TinyProject:
    """The config of the temp project and the outcome of its FM training."""

    cfg: Config
    fm: TrainOutcome

    @property
    def params(self) -> Path:
        """Its params.yaml (written out, for code that loads params itself)."""
        return self.cfg.root / "params.yaml"


_write_params = write_params  # (the name the project builders of other modules import)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, root: Path) -> TinyProject:
    """Build the temp project once per test session (~30 s)."""
    tmp = tmp_path_factory.mktemp("project")
    cfg = load_config(root / "params.yaml")
    paths = PathsConfig(**{f.name: f"data/{f.name}" for f in dataclasses.fields(PathsConfig)})
    fm = dataclasses.replace(
        cfg.fm,
        dim=16,
        max_len=30,
        n_layers=1,
        # no wall-clock budget: on a loaded runner the budget could end training after one epoch and
        # every test that learns from this FM would see another teacher
        train=dataclasses.replace(cfg.fm.train, max_epochs=2, batch_size=128, time_budget_s=None),
    )
    data = dataclasses.replace(cfg.data, path=str(root / cfg.data.path))
    cfg = dataclasses.replace(cfg, paths=paths, data=data, fm=fm, root=tmp)
    shutil.copytree(root / "features", tmp / "features", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = write_params(cfg, tmp / "params.yaml")
    ingest(cfg)
    prepare.run(cfg)
    split.run(cfg)
    outcome = train_fm(cfg, progress=False)
    return TinyProject(load_config(tmp / "params.yaml"), outcome)


@pytest.fixture
def tiny(tiny_project: TinyProject) -> TinyProject:
    """The temp project, with MLflow pointed at its store for this test."""
    use_project_store(tiny_project.cfg)
    return tiny_project


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback for the session, stopped afterwards (`host:port`)."""
    import subprocess
    import time

    from tests.conftest import require

    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server (Debian package redis-server; `make services` installs it)")
    from specrec.services import free_port

    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
