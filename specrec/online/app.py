"""Assemble the scorer service from the project: the Feast store, the serving bundle, the watcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import mlflow
from models.scorer import ThinScorer
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.io import read_parquet
from specrec.nearline import bundles
from specrec.nearline.store import open_store
from specrec.online.service import Scorer
from specrec.online.serving_state import ServingState, build_state
from specrec.online.train_scorer import load_registered
from specrec.tracking import use_project_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


def _scorer(bundle: bundles.Bundle) -> ThinScorer | None:
    """The bundle's thin scorer; none when the bundle has no scorer part (then the FM dot product ranks)."""
    version = bundle.parts.get("scorer", "")
    if not version:
        log.warning("bundle %s has no scorer: ranking by the FM dot product", bundle.bundle_id)
        return None
    try:
        return load_registered(version)
    except Exception as exc:  # noqa: BLE001 - any load failure means the bundle cannot be served as named
        raise SpecrecError(
            f"bundle {bundle.bundle_id} names specrec-scorer v{version}, which cannot be loaded: "
            f"{exc}. Train a scorer (train_scorer flow) and materialize a new bundle."
        ) from None


def _state(cfg: Config, store: FeatureStore, bundle: bundles.Bundle) -> ServingState:
    """Build the serving state of a bundle from the project's catalogue and users."""
    catalogue = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    users = read_parquet(cfg.path(cfg.paths.prepared) / "users.parquet", "prepared users")
    return build_state(
        store, bundle, catalogue, users["user_id"].astype(int).tolist(), scorer=_scorer(bundle)
    )


def build_scorer(
    cfg: Config,
    parallel: bool = True,
    candidates: int = 200,
    deadline_s: float = 0.05,
    watch_seconds: float = 5.0,
    now: Callable[[], float] = time.time,
) -> tuple[Scorer, Callable[[], Awaitable[None]]]:
    """The Scorer on the current serving bundle, and a coroutine that swaps bundles when the alias moves.

    `now` is the clock speculative rows expire against (the wall clock; a replay passes simulated time).
    """
    use_project_store(cfg)
    client, store = mlflow.MlflowClient(), open_store(cfg)
    bundle = bundles.serving(client)
    if bundle is None:
        raise SpecrecError(
            "no specrec-bundle@serving yet: run `specrec nearline run --as-of first` (or the "
            "materialize_item_embeddings flow) before serving."
        )
    scorer = Scorer(store, _state(cfg, store, bundle), candidates, deadline_s, parallel, now)

    async def watch() -> None:
        """Poll the serving alias; build the new bundle's state off the event loop, then swap."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(watch_seconds)
            try:
                current = await loop.run_in_executor(None, bundles.serving, client)
                if current is not None and current.version != scorer.state.bundle.version:
                    state = await loop.run_in_executor(None, _state, cfg, store, current)
                    scorer.swap(state)
                    log.info("now serving bundle %s (v%s)", current.bundle_id, current.version)
            except Exception as exc:  # noqa: BLE001 - keep serving the current bundle
                log.warning("bundle watch failed, still serving %s: %s", scorer.state.bundle.bundle_id, exc)

    return scorer, watch
