"""Which FM and thin scorer speculation works with: the serving bundle's, else the champions."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from models.hstu import HSTU
from specrec.errors import SpecrecError
from specrec.nearline import bundles
from specrec.nearline.materialize import load_fm
from specrec.registry import CHAMPION, alias_version


def serving_versions(client: MlflowClient) -> dict[str, str]:
    """FM and scorer versions of the serving bundle, or of the champions when nothing serves yet."""
    bundle = bundles.serving(client)
    fm = bundle.fm_version if bundle else alias_version(client, "specrec-fm", CHAMPION)
    scorer = bundle.parts.get("scorer", "") if bundle else alias_version(client, "specrec-scorer", CHAMPION)
    if not fm:
        raise SpecrecError("no specrec-fm@champion and no serving bundle: train the FM first (`dvc repro`).")
    return {"fm": str(fm), "scorer": str(scorer or ""), "bundle": bundle.bundle_id if bundle else ""}


def load_hstu(version: str) -> HSTU:
    """The registered FM version as an HSTU (speculation needs its pair representations)."""
    return as_hstu(load_fm(version), version)


def as_hstu(fm: object, version: str) -> HSTU:
    """`fm` (of specrec-fm `version`) when it is an HSTU; a clear error otherwise."""
    if not isinstance(fm, HSTU):
        raise SpecrecError(
            f"specrec-fm v{version} is a {type(fm).__name__}; speculation precomputes the FM's pair "
            "representations, which only the HSTU FM has. Set fm.model: hstu and retrain."
        )
    return fm


def serving_models(client: MlflowClient) -> tuple[Any, Any, dict[str, str]]:
    """The torch FM, the thin scorer (None when the bundle has none) and their versions."""
    from specrec.online.train_scorer import load_registered

    versions = serving_versions(client)
    fm = load_hstu(versions["fm"])
    scorer = load_registered(versions["scorer"]) if versions["scorer"] else None
    return fm, scorer, versions
