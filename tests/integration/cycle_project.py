"""A tiny project of its own for the cycle and replay tests, built once per session.

The cycle moves every champion alias (adapter, speculator, bundle); on the shared `tiny_project` that
would change what later test modules are gated against, so these tests get their own store. Same
shipped data and tiny FM as `tiny_project`, with the cycle's training steps cut to seconds.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from specrec.config import Config, PathsConfig, load_config
from specrec.data import prepare, split
from specrec.data.ingest import ingest
from specrec.fm.train import train_fm
from tests.integration.conftest import _write_params

_BUILT: dict[str, Config] = {}


def _cheap(cfg: Config) -> Config:
    """Tiny FM; one LoRA epoch; a speculator fitted on 28 days, judged on 7 at its default budget only."""
    fm = dataclasses.replace(
        cfg.fm,
        dim=16,
        max_len=30,
        n_layers=1,
        train=dataclasses.replace(cfg.fm.train, max_epochs=1, batch_size=128),
    )
    lora = dataclasses.replace(cfg.lora, epochs=1)
    spec = dataclasses.replace(cfg.speculation, train_days=28, eval_days=7, epochs=2, budgets=[1000])
    replay = dataclasses.replace(cfg.replay, requests=12)
    return dataclasses.replace(cfg, fm=fm, lora=lora, speculation=spec, replay=replay)


def cycle_project(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Config:
    """The project (built on first use in the session): data stages, a registered tiny FM, Feast repo."""
    if "cfg" in _BUILT:
        return _BUILT["cfg"]
    tmp = tmp_path_factory.mktemp("cycle_project")
    cfg = load_config(root / "params.yaml")
    paths = PathsConfig(**{f.name: f"data/{f.name}" for f in dataclasses.fields(PathsConfig)})
    data = dataclasses.replace(cfg.data, path=str(root / cfg.data.path))
    cfg = _cheap(dataclasses.replace(cfg, paths=paths, data=data, root=tmp))
    shutil.copytree(root / "features", tmp / "features", ignore=shutil.ignore_patterns("__pycache__"))
    _write_params(cfg, tmp / "params.yaml")
    cfg = load_config(tmp / "params.yaml")
    ingest(cfg)
    prepare.run(cfg)
    split.run(cfg)
    train_fm(cfg, progress=False)
    _BUILT["cfg"] = cfg
    return cfg
