"""The semantic-ID codebook for real, in a small temp project (a slice of the shipped MovieLens data):
MiniLM content embeddings, the initial codebook logged to MLflow and registered, codebook_refresh as a
real Prefect flow run that codes new items, writes them to Feast (read back with a plain Feast client)
and retrains only when a drift threshold is crossed, and the no-text fallback."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlflow
from specrec.clock import ReplayClock
from specrec.codebook import versions
from specrec.codebook.build import build_inputs
from specrec.codebook.refresh import refresh
from specrec.codebook.text import item_text_embed
from specrec.codebook.train import train_initial
from specrec.config import Config, PathsConfig, load_config
from specrec.data import prepare, split
from specrec.data.ingest import ingest
from specrec.errors import DataError
from specrec.fm.train import train_fm
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import prefect_harness
from tests.integration.conftest import _write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _slice(src: Path, dst: Path) -> None:
    """The 250 most rated movies first seen before 2018 and the 60 most rated first seen after."""
    ratings = pd.read_csv(src / "ratings.csv")
    first = ratings.groupby("movieId")["timestamp"].min()
    counts = ratings["movieId"].value_counts()
    cutoff = pd.Timestamp("2018-01-01").timestamp()
    old = counts[counts.index.isin(first[first < cutoff].index)].head(250).index
    new = counts[counts.index.isin(first[first >= cutoff].index)].head(60).index
    keep = set(old) | set(new)
    dst.mkdir(parents=True)
    ratings[ratings["movieId"].isin(keep)].to_csv(dst / "ratings.csv", index=False)
    movies = pd.read_csv(src / "movies.csv")
    movies[movies["movieId"].isin(keep)].to_csv(dst / "movies.csv", index=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Config:
    """A temp project with ~310 items: data stages, a tiny FM, content embeddings, a small codebook."""
    tmp = tmp_path_factory.mktemp("codebook_project")
    _slice(root / "datasets" / "ml-latest-small", tmp / "raw")
    cfg = load_config(root / "params.yaml")
    paths = PathsConfig(**{f.name: f"data/{f.name}" for f in dataclasses.fields(PathsConfig)})
    fm = dataclasses.replace(
        cfg.fm, dim=16, max_len=30, n_layers=1, train=dataclasses.replace(cfg.fm.train, max_epochs=1)
    )
    codebook = dataclasses.replace(
        cfg.codebook, levels=2, codebook_size=8, latent_dim=8, hidden=32, epochs=5, batch_size=64
    )
    data = dataclasses.replace(cfg.data, path=str(tmp / "raw"))
    cfg = dataclasses.replace(cfg, paths=paths, data=data, fm=fm, codebook=codebook, root=tmp)
    shutil.copytree(root / "features", tmp / "features", ignore=shutil.ignore_patterns("__pycache__"))
    _write_params(cfg, tmp / "params.yaml")
    cfg = load_config(tmp / "params.yaml")
    ingest(cfg)
    prepare.run(cfg)
    split.run(cfg)
    train_fm(cfg, progress=False)
    item_text_embed(cfg, progress=False)
    return cfg


@pytest.fixture
def proj(project: Config) -> Config:
    """The project with MLflow pointed at its store."""
    use_project_store(project)
    return project


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


def _with(cfg: Config, **drift: object) -> Path:
    """A params file next to the project's with other drift thresholds (returns its path)."""
    new = dataclasses.replace(
        cfg,
        codebook=dataclasses.replace(cfg.codebook, drift=dataclasses.replace(cfg.codebook.drift, **drift)),
    )
    path = cfg.root / f"params_{abs(hash(tuple(drift.items())))}.yaml"
    _write_params(new, path)
    return path


def _as_of(cfg: Config, cycle: int) -> str:
    return ReplayClock.from_config(cfg.clock).cycle(cycle).as_of.isoformat()


def test_initial_codebook_is_registered_with_health_and_unique_ids(proj: Config) -> None:
    outcome = train_initial(proj, progress=False)
    client = mlflow.MlflowClient()
    assert versions.champion_version(client) == outcome.version
    codebook = versions.load_version(client, outcome.version)
    sids = codebook.sids()
    assert len(sids) == outcome.trained.codebook.health().items > 200
    assert len({tuple(r) for r in sids}) == len(sids)  # unique after disambiguation
    assert sids[:, :2].max() < 8
    run = mlflow.get_run(outcome.run_id)
    assert run.info.experiment_id == experiment_id(proj.root, versions.EXPERIMENT)
    for key in ("utilisation_l1", "entropy_l2", "collision_rate", "recon_error", "items_without_text"):
        assert key in run.data.metrics
    h = codebook.health()
    assert run.data.metrics["collision_rate"] == pytest.approx(h.collision_rate)
    assert (proj.root / proj.codebook.out / "model.safetensors").exists()


def test_refresh_flow_codes_new_items_and_writes_them_to_feast(proj: Config, harness: None) -> None:
    from feast import FeatureStore

    from flows.codebook_refresh import codebook_refresh
    from specrec.nearline import bundles
    from specrec.nearline.store import apply

    if versions.champion_version(mlflow.MlflowClient()) is None:
        train_initial(proj, progress=False)
    apply(proj)
    params = _with(proj, min_items=10_000, max_new_share=100.0, retrain_on_fm_change=False)
    state = codebook_refresh(as_of=_as_of(proj, 3), params=str(params), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert not result["retrained"] and result["new_items"] > 0
    client = mlflow.MlflowClient()
    codebook = versions.load_version(client, result["version"])
    new = codebook.table[~codebook.table["reference"]]
    assert len(new) == result["new_items"] and (new["source"] == "content").all()  # cold: text alone
    sids = codebook.sids()
    assert len({tuple(r) for r in sids}) == len(sids)
    # a second run at the same as_of codes nothing new and changes no ID
    again = refresh(load_config(params), _as_of(proj, 3), client)
    assert again.new_items == 0
    assert [list(s) for s in versions.load_version(client, result["version"]).sids()] == [
        list(s) for s in sids
    ]
    # the serving bundle names this codebook; its item_repr rows carry the IDs (plain Feast read)
    serving = bundles.serving(client)
    assert serving is not None and serving.parts["codebook"] == result["version"]
    repo = proj.root / "features"
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / proj.feast_yaml)
    ids = codebook.table["item_id"].tolist()
    got = store.get_online_features(
        features=["item_repr:semantic_id", "item_repr:embedding"],
        entity_rows=[{"item_id": int(i), "bundle_id": serving.bundle_id} for i in ids],
    ).to_dict()
    assert [list(v) for v in got["semantic_id"]] == [list(s) for s in codebook.table["sid"]]
    # cold items share codes with warm ones: their embedding is close to some warm item's, not random
    emb = np.array(got["embedding"], dtype=np.float32)
    cold = codebook.table["reference"].to_numpy() == False  # noqa: E712
    sims = emb[cold] @ emb[~cold].T
    assert np.median(sims.max(axis=1)) > 0.5


def test_drift_threshold_triggers_retrain_and_records_stability(proj: Config) -> None:
    client = mlflow.MlflowClient()
    if versions.champion_version(client) is None:
        train_initial(proj, progress=False)
    calm = load_config(_with(proj, min_items=10_000, max_new_share=100.0, retrain_on_fm_change=False))
    quiet = refresh(calm, _as_of(proj, 5), client)
    assert not quiet.retrained and quiet.reasons == []
    before = versions.champion_version(client)
    strict = load_config(_with(proj, min_items=10_000, max_new_share=0.0001, retrain_on_fm_change=False))
    loud = refresh(strict, _as_of(proj, 6), client)
    assert loud.retrained and loud.reasons and loud.reasons[0].startswith("new_share")
    assert loud.challenger is not None and loud.challenger != before
    assert 0.0 <= loud.stability["prefix_changed_d1"] <= loud.stability["raw_prefix_changed_d1"] <= 1.0
    run = mlflow.get_run(loud.run_id)
    assert run.data.metrics["drift_retrain"] == 1.0 and "prefix_changed" in run.data.metrics
    assert mlflow.get_run(quiet.run_id).data.metrics["drift_retrain"] == 0.0
    assert set(mlflow.get_run(quiet.run_id).data.metrics) == set(run.data.metrics)  # the compare view


def test_items_without_text_fall_back_to_collab_and_are_counted(proj: Config) -> None:
    from specrec.codebook.serving import fm_info
    from specrec.registry import CHAMPION, alias_version

    client = mlflow.MlflowClient()
    items = pd.read_parquet(proj.path(proj.paths.prepared) / "items.parquet")
    fm = fm_info(client, alias_version(client, "specrec-fm", CHAMPION) or "", proj.clock.start)
    warm = items[items["first_seen"] < fm.cutoff].head(30).copy()
    warm.loc[warm.index[:4], ["title", "genres"]] = ""
    cold = items[items["first_seen"] >= fm.cutoff].head(2).copy()
    cold[["title", "genres"]] = ""  # neither text nor a trained embedding: no ID, named and counted
    inputs = build_inputs(proj, pd.concat([warm, cold]), fm)
    assert inputs.without_text == 4
    assert (inputs.items["source"] == "collab").sum() == 4
    assert sorted(inputs.uncoded["item_id"]) == sorted(cold["item_id"])
    with pytest.raises(DataError, match=str(int(warm["item_id"].iloc[0]))):
        build_inputs(proj, pd.concat([warm, warm.head(1)]), fm)
