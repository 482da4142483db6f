"""The registry side of adapters: the champion base, adapter versions in peft format, the gate, rollback.

An adapter version of `specrec-fm-adapter` is a run artifact folder `adapter/` holding what peft's
`save_pretrained` writes (adapter_model.safetensors + adapter_config.json), tagged with the FM version
it adapts (`base_version`), its `as_of` and the MLflow run. An adapter only ever runs on its own base.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import pandas as pd
from mlflow.exceptions import MlflowException
from peft import PeftModel

import mlflow
from mlflow import MlflowClient
from models import lora
from models.hstu import HSTU
from specrec.errors import SpecrecError
from specrec.registry import CHAMPION, Promotion, alias_version, metric_key, promote_if_better

log = logging.getLogger(__name__)

BASE_MODEL = "specrec-fm"
ADAPTER_MODEL = "specrec-fm-adapter"
ARTIFACT = "adapter"
PREVIOUS = "previous_champion"  # tag on a promoted version: the version the alias pointed to before
CUTOFF = "train_cutoff"  # tag on an FM version: events at or after it were not trained on


def entry(name: str, version: str | None, alias: str = CHAMPION) -> str:
    """How a registry entry is named in messages: 'specrec-fm@champion (v3)'."""
    return f"{name}@{alias}" + (f" (v{version})" if version else "")


def load_base(client: MlflowClient, version: str | None = None) -> tuple[HSTU, str]:
    """The FM `version` (default: specrec-fm@champion) as an HSTU in eval mode, and its version."""
    what = entry(BASE_MODEL, version) if version is None else f"{BASE_MODEL} v{version}"
    if version is None:
        version = alias_version(client, BASE_MODEL, CHAMPION)
        if version is None:
            raise SpecrecError(
                f"no {BASE_MODEL}@{CHAMPION} in the MLflow registry at {mlflow.get_tracking_uri()}: "
                "train the FM first (`dvc repro train_fm`) or point MLFLOW_TRACKING_URI at the right store."
            )
        what = entry(BASE_MODEL, version)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{BASE_MODEL}/{version}").unwrap_python_model().model
    except Exception as exc:  # noqa: BLE001 - missing files, bad safetensors, bad config: one problem
        raise SpecrecError(
            f"{what} cannot be loaded from the MLflow registry ({type(exc).__name__}: {exc}). "
            f"Its artifacts are missing or corrupt: retrain (`dvc repro train_fm`) or move the alias to a "
            f"good version (`specrec model rollback --name {BASE_MODEL}`)."
        ) from None
    if not isinstance(model, HSTU):
        raise SpecrecError(
            f"{what} is a {type(model).__name__}; LoRA adapters need an HSTU (fm.model: hstu)."
        )
    return model.eval(), version


def base_cutoff(client: MlflowClient, version: str) -> pd.Timestamp:
    """The training cutoff of an FM version: its `train_cutoff` tag, else its training run's `as_of`."""
    mv = client.get_model_version(BASE_MODEL, version)
    value = mv.tags.get(CUTOFF) or (client.get_run(mv.run_id).data.tags.get("as_of") if mv.run_id else None)
    if not value:
        raise SpecrecError(
            f"{BASE_MODEL} v{version} has neither a {CUTOFF!r} tag nor a training run tagged 'as_of': "
            f"cannot tell which items are new to it. Tag it: {CUTOFF}=<ISO time of its last trained event>."
        )
    return (
        pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tzinfo else pd.Timestamp(value, tz="UTC")
    )


@dataclass(frozen=True)
class AdapterVersion:
    """A registered adapter: its version, the FM version it adapts, and the loaded peft model."""

    version: str
    base_version: str
    model: PeftModel
    base: HSTU  # the bare base it sits on


def load_adapter(client: MlflowClient, version: str, base: HSTU | None = None) -> AdapterVersion:
    """Registered adapter `version` on its own base (loaded unless given), in eval mode."""
    what = f"{ADAPTER_MODEL} v{version}"
    try:
        mv = client.get_model_version(ADAPTER_MODEL, version)
    except MlflowException as exc:
        raise SpecrecError(f"{what} is not in the MLflow registry: {exc}") from None
    base_version = mv.tags.get("base_version", "")
    if base is None:
        base, _ = load_base(client, base_version)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=ARTIFACT, dst_path=tmp
            )
            model = lora.load(base, folder)
    except Exception as exc:  # noqa: BLE001 - missing or corrupt adapter files
        raise SpecrecError(
            f"{what} cannot be loaded ({type(exc).__name__}: {exc}); its artifact folder '{ARTIFACT}' of run "
            f"{mv.run_id} is missing or corrupt. Move the alias back: `specrec model rollback`."
        ) from None
    return AdapterVersion(version, base_version, model, base)


def champion_adapter(client: MlflowClient, base_version: str | None = None) -> AdapterVersion | None:
    """specrec-fm-adapter@champion on its own base; None when there is none, or when `base_version` is
    given and the champion adapts another base (after a retrained base was promoted it does not serve)."""
    version = alias_version(client, ADAPTER_MODEL, CHAMPION)
    if version is None:
        return None
    if base_version is not None:
        own = client.get_model_version(ADAPTER_MODEL, version).tags.get("base_version")
        if own != base_version:
            return None
    return load_adapter(client, version)


def register_adapter(client: MlflowClient, model: PeftModel, run_id: str, tags: dict[str, str]) -> str:
    """Log the adapter (peft format) as the active run's `adapter/` and register it; return the version."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        mlflow.log_artifacts(tmp, ARTIFACT)
    if not client.search_registered_models(f"name='{ADAPTER_MODEL}'"):
        client.create_registered_model(ADAPTER_MODEL)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    mv = client.create_model_version(ADAPTER_MODEL, f"{artifact_uri}/{ARTIFACT}", run_id, tags=tags)
    return str(mv.version)


def passes(score: float, champion_score: float | None, floor: float | None, tolerance: float) -> bool:
    """The gate's rule without the registry: not worse than the floor and the champion, within tolerance."""
    return all(ref is None or score > ref - tolerance for ref in (floor, champion_score))


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    score: float,
    champion_score: float | None,
    floor: float | None,
    tolerance: float,
) -> Promotion:
    """Promote `version` of `name` to champion when it is not worse than the champion (and the floor).

    Like with like: the champion's gate tag is first set to its score on the same holdout, then
    specrec.registry.promote_if_better decides. `floor` (the bare base's score for an adapter) must be
    reached within the tolerance too; a challenger below it is rejected without asking the champion.
    """
    tag = f"gate_{metric_key(metric)}"
    current = alias_version(client, name, CHAMPION)
    if not passes(score, None, floor, tolerance):
        reason = f"{metric} {score:.5f} is below the bare base's {floor:.5f} (tolerance {tolerance})"
        client.set_model_version_tag(name, version, tag, repr(float(score)))
        client.set_model_version_tag(name, version, "gate_decision", "rejected")
        client.set_model_version_tag(name, version, "gate_reason", reason)
        log.info("%s v%s: rejected (%s)", name, version, reason)
        return Promotion(False, reason, version, current, score, champion_score)
    if current is not None and current != version and champion_score is not None:
        client.set_model_version_tag(name, current, tag, repr(float(champion_score)))
    decision = promote_if_better(client, name, version, metric, score, tolerance)
    if decision.promoted and current is not None and current != version:
        client.set_model_version_tag(name, version, PREVIOUS, current)
    return decision


def rollback(client: MlflowClient, name: str = ADAPTER_MODEL) -> tuple[str, str]:
    """Move `name`@champion back to the version it replaced; return (from, to).

    The previous version is the `previous_champion` tag the gate wrote on promotion, else the newest
    older version the gate promoted.
    """
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise SpecrecError(f"{name} has no {CHAMPION} alias in the MLflow registry: nothing to roll back.")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS)
    if not previous:
        older = [
            v
            for v in client.search_model_versions(f"name='{name}'")
            if int(v.version) < int(current) and v.tags.get("gate_decision") == "promoted"
        ]
        previous = str(max(int(v.version) for v in older)) if older else None
    if previous is None:
        raise SpecrecError(
            f"{entry(name, current)} has no earlier champion to roll back to (no {PREVIOUS!r} tag and no "
            "older version the gate promoted)."
        )
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back", "true")
    log.info("%s@%s: v%s -> v%s (rollback)", name, CHAMPION, current, previous)
    return current, previous


def serving_model(client: MlflowClient) -> tuple[HSTU, dict[str, str]]:
    """What to serve: specrec-fm@champion with the champion adapter merged in (merge_and_unload) when that
    adapter was trained on it, else the bare base.

    Returns the plain HSTU and the versions it was built from ({"fm": ..., "adapter": ... or ""}).
    """
    base, version = load_base(client)
    champion = champion_adapter(client, version)
    if champion is None:
        return base, {"fm": version, "adapter": ""}
    return lora.merge(champion.model), {"fm": version, "adapter": champion.version}
