"""The FM of a serving bundle: its base version, its adapter merged in, its codebook's code embeddings.

Every writer of a bundle's rows (item_repr, user_state, speculative) takes its model from `bundle_fm`, so
all of a bundle's rows come from one adapted model (the serving-bundle consistency rule) and a promoted
adapter reaches users through the next bundle. An adapter only ever runs on its own base: a bundle that
names an adapter of another FM version is refused. Bundle parts are immutable registry versions, so the
loaded model is cached per (MLflow store, project, bundle id) in the process: the 5-minute flows and the
replay's per-window precompute load a bundle once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from specrec.codebook.serving import BundleCodes, bundle_model
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.nearline import bundles

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from models.train import RecModel

log = logging.getLogger(__name__)

KEEP = 2  # bundles kept loaded: the serving one and the one being materialized (blue/green)


@dataclass(frozen=True)
class BundleFM:
    """A bundle's model (eval mode, shared through the cache: never train or change it) and its codes."""

    bundle_id: str
    model: RecModel
    codes: BundleCodes | None  # semantic IDs of the bundle's codebook, None without one
    adapter_rows: tuple[int, ...]  # item_idx whose embedding rows the adapter learned (new items)


_CACHE: OrderedDict[tuple[str, str, str], BundleFM] = OrderedDict()


def adapted_fm(
    client: MlflowClient, fm_version: str, adapter_version: str
) -> tuple[RecModel, tuple[int, ...]]:
    """specrec-fm `fm_version` with adapter `adapter_version` merged in ('' : the bare base), and the item
    rows the adapter learned."""
    from models import lora
    from specrec.lora import adapters
    from specrec.nearline.materialize import load_fm

    if not adapter_version:
        return load_fm(fm_version), ()
    base, _ = adapters.load_base(client, fm_version)
    adapter = adapters.load_adapter(client, adapter_version, base)
    if adapter.base_version != fm_version:
        raise SpecrecError(
            f"the bundle names {adapters.ADAPTER_MODEL} v{adapter_version}, which adapts "
            f"{adapters.BASE_MODEL} v{adapter.base_version or '?'}, not the bundle's v{fm_version}: an "
            "adapter only runs on its own base. Materialize bundle='champion' instead."
        )
    return lora.merge(adapter.model), tuple(int(i) for i in lora.token_rows(adapter.model))


def load(cfg: Config, client: MlflowClient, bundle: bundles.Bundle) -> BundleFM:
    """Load the bundle's model from the registry (no cache)."""
    model, rows = adapted_fm(client, bundle.fm_version, bundle.parts.get("adapter", ""))
    codebook = bundle.parts.get("codebook", "")
    model, codes = bundle_model(cfg, client, model, bundle.fm_version, codebook, rows)
    log.info("bundle %s: FM %s loaded", bundle.bundle_id, bundle.parts)
    return BundleFM(bundle.bundle_id, model.eval(), codes, rows)


def bundle_fm(cfg: Config, client: MlflowClient, bundle: bundles.Bundle) -> BundleFM:
    """The bundle's model, loaded once per process (the KEEP most recently used bundles stay loaded)."""
    key = (str(client.tracking_uri), str(cfg.root), bundle.bundle_id)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loaded = load(cfg, client, bundle)
    _CACHE[key] = loaded
    while len(_CACHE) > KEEP:
        _CACHE.popitem(last=False)
    return loaded


def clear_cache() -> None:
    """Forget every loaded bundle model (the next bundle_fm call loads from the registry)."""
    _CACHE.clear()
