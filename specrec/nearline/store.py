"""Open the project's Feast store (profile from params.yaml) and apply its definitions.

`features/definitions.py` is the one place the views are defined; `apply` registers exactly what
`feast apply` would, without shelling out. Offline history paths come from the views' batch sources,
so they are written once, in the feature repo.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from specrec.config import Config
from specrec.errors import SpecrecError

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

DEFINITIONS = "definitions.py"


def repo_path(cfg: Config) -> Path:
    """The Feast repo folder."""
    return cfg.path(cfg.feast.repo)


def open_store(cfg: Config) -> FeatureStore:
    """A FeatureStore over the repo with the configured profile's yaml."""
    from feast import FeatureStore

    repo = repo_path(cfg)
    yaml = repo / cfg.feast_yaml
    if not yaml.is_file():
        raise SpecrecError(f"Feast config {yaml} not found; check feast.repo and profile in params.yaml.")
    if cfg.production:  # the yaml reads the servers from the environment (Feast's ${VAR} substitution)
        import os

        from specrec.services import endpoints

        os.environ.update(endpoints(cfg).feast_env())
    (repo.parent / "data" / "feast").mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)


def _load_definitions(repo: Path) -> ModuleType:
    """Import features/definitions.py by path (the repo is not a package)."""
    spec = importlib.util.spec_from_file_location("specrec_feature_definitions", repo / DEFINITIONS)
    if spec is None or spec.loader is None:
        raise SpecrecError(f"cannot import {repo / DEFINITIONS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definitions(cfg: Config) -> list[Any]:
    """Every Feast object defined in the repo (entities, views, push sources, feature services)."""
    from feast import Entity, FeatureService, FeatureView, PushSource

    module = _load_definitions(repo_path(cfg))
    kinds = (Entity, FeatureView, FeatureService, PushSource)
    objects = [v for v in vars(module).values() if isinstance(v, kinds)]
    sources = [v.source for v in objects if isinstance(v, FeatureView) and isinstance(v.source, PushSource)]
    return objects + [s for s in sources if s not in objects]


def apply(cfg: Config, store: FeatureStore | None = None) -> FeatureStore:
    """Register the repo's definitions and create the online tables (what `feast apply` does)."""
    store = store or open_store(cfg)
    objects = definitions(cfg)
    store.apply(objects)
    log.info("feast apply: %d objects in project %s", len(objects), store.project)
    return store


def offline_dir(store: FeatureStore, view: str) -> Path:
    """The folder of a view's parquet history, from its batch source."""
    fv = store.get_feature_view(view)
    source = fv.batch_source
    path = Path(source.path)  # type: ignore[union-attr]
    return path if path.is_absolute() else Path(store.repo_path) / path
