"""Which FM and thin scorer speculation works with: the serving bundle's, else the champions.

The FM is the bundle's own model (base with its adapter merged in and its code embeddings:
specrec.nearline.bundle_fm), the model the bundle's user_state, item_repr and speculative rows come from,
so the predictor's ahead-of-time retrieval and the benchmark's replay see what serving sees.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from models.hstu import HSTU
from specrec.config import Config
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


def serving_fm(cfg: Config, client: MlflowClient) -> HSTU:
    """The serving bundle's FM (bundle_fm), or the bare specrec-fm@champion when nothing serves yet."""
    from specrec.nearline.bundle_fm import bundle_fm

    bundle = bundles.serving(client)
    if bundle is None:
        return load_hstu(serving_versions(client)["fm"])
    return as_hstu(bundle_fm(cfg, client, bundle).model, bundle.fm_version)


def serving_models(
    cfg: Config, client: MlflowClient, scorer_version: str | None = None, bare_fm: bool = False
) -> tuple[Any, Any, dict[str, str]]:
    """The bundle's torch FM (`bare_fm`: its base without adapter or codes, for comparison), the thin
    scorer (None when the bundle has none; `scorer_version` picks another registered version) and their
    versions."""
    from specrec.online.train_scorer import load_registered

    versions = serving_versions(client)
    if scorer_version:
        versions["scorer"] = scorer_version
    fm = load_hstu(versions["fm"]) if bare_fm else serving_fm(cfg, client)
    versions["fm_model"] = "bare base" if bare_fm else "bundle (base + adapter + codes)"
    scorer = load_registered(versions["scorer"]) if versions["scorer"] else None
    return fm, scorer, versions
