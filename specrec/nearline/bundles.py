"""Serving bundles: one model generation, named by the versions of its parts, registered in MLflow.

A bundle is a version of the registered model `specrec-bundle` whose tags name its parts (FM base,
adapter, codebook, scorer versions) and whose `bundle_id` is a hash of them, so the same parts always
give the same id. Its life: registered -> materialized (every item row written; tag `complete`) ->
`specrec-bundle@serving`. The serving alias only ever moves to a complete bundle.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from mlflow import MlflowClient
from specrec.errors import SpecrecError
from specrec.registry import CHAMPION, SERVING, alias_version

log = logging.getLogger(__name__)

REGISTERED_MODEL = "specrec-bundle"
PARTS = {
    "fm": "specrec-fm",
    "adapter": "specrec-fm-adapter",
    "codebook": "specrec-codebook",
    "scorer": "specrec-scorer",
}


@dataclass(frozen=True)
class Bundle:
    """A model generation: the registry version of each part ('' when the part does not exist yet)."""

    parts: dict[str, str] = field(default_factory=dict)
    version: str | None = None  # the specrec-bundle registry version, once registered

    @property
    def bundle_id(self) -> str:
        """A stable id from the parts: the same parts always give the same id."""
        text = ";".join(f"{k}={self.parts.get(k, '')}" for k in PARTS)
        return "b" + hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def fm_version(self) -> str:
        """The FM base version (every bundle has one)."""
        return self.parts["fm"]


def champion_parts(client: MlflowClient) -> dict[str, str]:
    """The champion version of every part that has one; no adapter when the champion adapter adapts
    another FM version (after a retrained base is promoted, until an adapter is trained on it)."""
    parts = {key: alias_version(client, name, CHAMPION) or "" for key, name in PARTS.items()}
    if not parts["fm"]:
        raise SpecrecError(
            "no specrec-fm@champion in the MLflow registry: train the FM first (`dvc repro train_fm`)."
        )
    if parts["adapter"]:
        own = client.get_model_version(PARTS["adapter"], parts["adapter"]).tags.get("base_version", "")
        if own != parts["fm"]:
            log.info("adapter v%s adapts FM v%s, not v%s: left out", parts["adapter"], own, parts["fm"])
            parts["adapter"] = ""
    return parts


def _tags(bundle: Bundle) -> dict[str, str]:
    """Registry tags of a bundle version."""
    return {"bundle_id": bundle.bundle_id, **{f"part_{k}": v for k, v in bundle.parts.items()}}


def find(client: MlflowClient, bundle_id: str) -> Bundle | None:
    """The registered bundle with this id, if any."""
    found = client.search_model_versions(f"name='{REGISTERED_MODEL}' and tags.bundle_id='{bundle_id}'")
    if not found:
        return None
    v = found[0]
    parts = {k: v.tags.get(f"part_{k}", "") for k in PARTS}
    return Bundle(parts, str(v.version))


def register(client: MlflowClient, parts: dict[str, str], experiment_id: str) -> Bundle:
    """Register a bundle (idempotent: the same parts return the existing version)."""
    import mlflow

    bundle = Bundle(parts)
    existing = find(client, bundle.bundle_id)
    if existing is not None:
        return existing
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bundle-{bundle.bundle_id}") as run:
        mlflow.log_dict({"bundle_id": bundle.bundle_id, "parts": parts}, "bundle/bundle.json")
        mlflow.set_tags({"kind": "bundle", **_tags(bundle)})
    if not client.search_registered_models(f"name='{REGISTERED_MODEL}'"):
        client.create_registered_model(REGISTERED_MODEL)
    mv = client.create_model_version(
        REGISTERED_MODEL,
        f"{run.info.artifact_uri}/bundle",
        run.info.run_id,
        tags=_tags(bundle) | {"complete": "false"},
    )
    log.info("registered bundle %s as %s v%s (%s)", bundle.bundle_id, REGISTERED_MODEL, mv.version, parts)
    return Bundle(parts, str(mv.version))


def is_complete(client: MlflowClient, bundle: Bundle) -> bool:
    """Whether every item row of the bundle has been written."""
    assert bundle.version is not None
    return client.get_model_version(REGISTERED_MODEL, bundle.version).tags.get("complete") == "true"


def tag(client: MlflowClient, bundle: Bundle, **tags: str) -> None:
    """Set tags on the bundle's registry version."""
    assert bundle.version is not None
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, bundle.version, key, value)


def serving(client: MlflowClient) -> Bundle | None:
    """The bundle `specrec-bundle@serving` points to."""
    version = alias_version(client, REGISTERED_MODEL, SERVING)
    if version is None:
        return None
    v = client.get_model_version(REGISTERED_MODEL, version)
    return Bundle({k: v.tags.get(f"part_{k}", "") for k in PARTS}, version)


def promote_serving(client: MlflowClient, bundle: Bundle) -> None:
    """Move `specrec-bundle@serving` to a complete bundle; refuse an incomplete one."""
    if not is_complete(client, bundle):
        raise SpecrecError(
            f"bundle {bundle.bundle_id} (v{bundle.version}) is not completely materialized; "
            "the serving alias only moves to a complete bundle. Rerun materialize_item_embeddings."
        )
    assert bundle.version is not None
    client.set_registered_model_alias(REGISTERED_MODEL, SERVING, bundle.version)
    log.info("specrec-bundle@serving -> v%s (%s)", bundle.version, bundle.bundle_id)
