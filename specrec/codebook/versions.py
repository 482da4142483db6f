"""The codebook in the MLflow registry: `specrec-codebook` versions, their semantic-ID tables, the gate.

A version is an artifact-based registered model: the codebook folder (build.py) logged under the run's
`codebook/` artifacts. Refresh runs hand out IDs to new items with a frozen version; the grown table
is logged by each refresh run (`semantic_ids/semantic_ids.parquet`) and the version's tag
`semantic_ids_run` names the newest one, so readers (materialization) get every ID handed out so far.

The gate: a challenger becomes `specrec-codebook@champion` when its mean reconstruction error on the
catalogue known at as_of is lower than the champion's on the same items (both are re-scored, so like
is compared with like); the decision is recorded on the version by specrec.registry.promote_if_better.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow import MlflowClient
from specrec.codebook.build import TABLE_FILE, Codebook, FMInfo, Inputs, build_inputs, load, read_table
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.registry import CHAMPION, Promotion, alias_version, promote_if_better

log = logging.getLogger(__name__)

REGISTERED_MODEL = "specrec-codebook"
EXPERIMENT = "codebook-refresh"
ARTIFACT_DIR = "codebook"
TABLE_DIR = "semantic_ids"
GATE_METRIC = "neg_recon_error"  # promote_if_better keeps the higher score


def register(client: MlflowClient, folder: Path, run_id: str, tags: dict[str, str]) -> str:
    """Log the codebook folder to the run and register it as a new specrec-codebook version."""
    import mlflow

    mlflow.log_artifacts(str(folder), ARTIFACT_DIR)
    if not client.search_registered_models(f"name='{REGISTERED_MODEL}'"):
        client.create_registered_model(REGISTERED_MODEL)
    uri = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}"
    mv = client.create_model_version(REGISTERED_MODEL, uri, run_id, tags=tags)
    log.info("registered %s v%s", REGISTERED_MODEL, mv.version)
    return str(mv.version)


def exists(client: MlflowClient, version: str) -> bool:
    """Whether `version` is a registered specrec-codebook version."""
    if not version.isdigit():
        return False
    found = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    return any(str(v.version) == version for v in found)


def load_version(client: MlflowClient, version: str) -> Codebook:
    """The codebook of a registered version, with every semantic ID handed out so far."""
    import mlflow

    try:
        mv = client.get_model_version(REGISTERED_MODEL, version)
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))
    except Exception as exc:  # noqa: BLE001 - any failure here is the same problem for the user
        raise SpecrecError(
            f"cannot load {REGISTERED_MODEL} version {version} from the MLflow registry: {exc}. "
            "Check MLFLOW_TRACKING_URI, or train a codebook with `dvc repro codebook`."
        ) from None
    run = mv.tags.get("semantic_ids_run")
    table = None
    if run:
        path = mlflow.artifacts.download_artifacts(run_id=run, artifact_path=f"{TABLE_DIR}/{TABLE_FILE}")
        table = read_table(Path(path))
    return load(folder, table)


def champion_version(client: MlflowClient) -> str | None:
    """The version `specrec-codebook@champion` points to."""
    return alias_version(client, REGISTERED_MODEL, CHAMPION)


def log_table(client: MlflowClient, codebook: Codebook, version: str, run_id: str, as_of: str) -> None:
    """Log the grown semantic-ID table to the run and point the version at it."""
    import mlflow
    from specrec.codebook.build import write_table

    with tempfile.TemporaryDirectory() as tmp:
        write_table(codebook.table, Path(tmp) / TABLE_FILE)
        mlflow.log_artifact(str(Path(tmp) / TABLE_FILE), TABLE_DIR)
    client.set_model_version_tag(REGISTERED_MODEL, version, "semantic_ids_run", run_id)
    client.set_model_version_tag(REGISTERED_MODEL, version, "assigned_as_of", as_of)
    client.set_model_version_tag(REGISTERED_MODEL, version, "items", str(len(codebook.table)))


def score(codebook: Codebook, inputs: Inputs) -> float:
    """The gate score of a codebook on some items: minus their mean reconstruction error."""
    return -float(codebook.model.item_errors(inputs.x, inputs.mask).mean())


def gate(
    client: MlflowClient,
    cfg: Config,
    version: str,
    challenger: Codebook,
    items: pd.DataFrame,
    fm: FMInfo | None,
    champion_fm: FMInfo | None,
) -> Promotion:
    """Re-score champion and challenger on the same items; move the champion alias when it wins."""
    inputs = build_inputs(cfg, items, fm)
    current = champion_version(client)
    if current is not None and current != version:
        champion = load_version(client, current)
        champion_fm = _own_fm(client, cfg, champion, champion_fm)
        same = champion_fm is fm or (
            champion_fm is not None and fm is not None and champion_fm.version == fm.version
        )
        ch_inputs = inputs if same else build_inputs(cfg, items, champion_fm)
        client.set_model_version_tag(
            REGISTERED_MODEL, current, f"gate_{GATE_METRIC}", repr(score(champion, ch_inputs))
        )
    return promote_if_better(client, REGISTERED_MODEL, version, GATE_METRIC, score(challenger, inputs))


def _own_fm(client: MlflowClient, cfg: Config, codebook: Codebook, given: FMInfo | None) -> FMInfo | None:
    """The FM a codebook was trained with (its collaborative input), loaded when `given` is another one."""
    from specrec.codebook.serving import fm_info

    wanted = str(codebook.meta.get("fm_version", ""))
    if not wanted:
        return None
    if given is not None and given.version == wanted:
        return given
    return fm_info(client, wanted, cfg.clock.start)


def codes_by_item_idx(codebook: Codebook, n_items: int) -> np.ndarray:
    """(n_items+1, L+1) semantic IDs indexed by item_idx; -1 rows for items without one."""
    out = np.full((n_items + 1, codebook.levels + 1), -1, dtype=np.int64)
    if len(codebook.table):
        idx = codebook.table["item_idx"].to_numpy(np.int64)
        ok = idx <= n_items
        out[idx[ok]] = codebook.sids()[ok]
    return out
