"""A promoted LoRA adapter serves through the bundle: on a copy of the tiny project (its own MLflow store and
Feast store), the item_repr and user_state rows of a bundle with an adapter equal the adapted model's
embeddings and user states, not the bare base's; the bundle's model is loaded once per process; a bundle
naming an adapter of another base is refused; several user_state writes on one day keep their histories."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from models.hstu import HSTU
from specrec.clock import to_utc
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.lora import adapters
from specrec.lora.finetune import run_cycle
from specrec.nearline import bundle_fm, bundles
from specrec.nearline.item_stats import update_item_stats
from specrec.nearline.materialize import load_fm, materialize_items
from specrec.nearline.store import apply, offline_dir
from specrec.nearline.user_state import update_user_state
from specrec.registry import CHAMPION
from specrec.tracking import experiment_id
from tests.conftest import copy_project
from tests.integration.conftest import TinyProject
from tests.integration.test_lora_flow import _params, _use

pytestmark = [pytest.mark.integration, pytest.mark.slow]

URI_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
AS_OF = "2018-01-29"  # the adapter's cycle: its new items are known here


@pytest.fixture(scope="module")
def adapted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    """A copy of the tiny project with a trained, promoted adapter and the champions' bundle materialized."""
    # module-scoped, so the autouse URI restore does not cover it: saved before the tiny project (whose
    # training points MLflow at its store) is built, restored at the end
    saved = {k: os.environ.get(k) for k in URI_KEYS}
    tiny_project: TinyProject = request.getfixturevalue("tiny_project")
    folder = tmp_path_factory.mktemp("bundle_adapter") / "project"
    copy_project(tiny_project.cfg, folder, ("feast", "kv_cache"))
    cfg = _params(folder, tolerance=0.99)  # fast lora settings; any challenger passes the gate
    client = mlflow.MlflowClient()
    out = run_cycle(cfg, AS_OF, progress=False)
    assert out.status == "promoted", out.reason
    bundle_fm.clear_cache()
    store = apply(cfg)
    bundle = bundles.register(client, bundles.champion_parts(client), experiment_id(cfg.root, "materialize"))
    assert bundle.parts["adapter"] == out.adapter_version and bundle.parts["fm"] == out.base_version
    when = to_utc(AS_OF)
    result = materialize_items(
        cfg,
        when,
        bundle,
        store,
        client,
        progress=False,
        before_serving=lambda b: update_user_state(cfg, when, b, store, client),
    )
    assert result.mode == "complete" and result.promoted
    # the reference: the existing serving path (champion adapter merged into its base), loaded on its own
    merged, versions = adapters.serving_model(client)
    assert versions == {"fm": bundle.fm_version, "adapter": out.adapter_version}
    yield {"cfg": cfg, "store": store, "bundle": bundle, "merged": merged, "as_of": when}
    bundle_fm.clear_cache()
    for key, value in saved.items():  # keep this copy's store out of the next module's fixtures
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _use_copy(adapted: dict) -> tuple[Config, mlflow.MlflowClient]:  # type: ignore[type-arg]
    """Point MLflow at the copy's store again (other tests' fixtures move it)."""
    return _use(adapted["cfg"]), mlflow.MlflowClient()


def _known_items(cfg: Config, when: pd.Timestamp) -> pd.DataFrame:
    items = pd.read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet")
    return items[items["first_seen"].notna() & (items["first_seen"] < when)]


def test_item_rows_are_the_adapted_models(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, client = _use_copy(adapted)
    bundle, merged = adapted["bundle"], adapted["merged"]
    known = _known_items(cfg, adapted["as_of"])
    got = adapted["store"].get_online_features(
        features=["item_repr:embedding"],
        entity_rows=[{"item_id": int(i), "bundle_id": bundle.bundle_id} for i in known["item_id"]],
    ).to_dict()
    rows = np.asarray(got["embedding"], dtype=np.float32)  # (N, D)
    idx = known["item_idx"].to_numpy()
    with torch.no_grad():
        want = merged.item_embeddings().numpy()[idx]
        bare = load_fm(bundle.fm_version).item_embeddings().numpy()[idx]
    np.testing.assert_allclose(rows, want, rtol=0, atol=1e-6)
    # the adapter learned the rows of the items new to its base; every other row is the base's
    learned = np.isin(idx, bundle_fm.bundle_fm(cfg, client, bundle).adapter_rows)
    assert learned.sum() > 0
    assert np.abs(rows[learned] - bare[learned]).max(axis=1).min() > 1e-4
    np.testing.assert_allclose(rows[~learned], bare[~learned], rtol=0, atol=1e-6)


def _histories(cfg: Config, when: pd.Timestamp) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per user: item_idx and unix seconds of the events before `when`, in event order."""
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    events = events[events["timestamp"] < when].sort_values(["user_id", "event_id"], kind="stable")
    seconds = events["timestamp"].astype("int64") // 1_000_000_000
    return {
        int(u): (g["item_idx"].to_numpy(np.int64), seconds.loc[g.index].to_numpy(np.int64))
        for u, g in events.groupby("user_id", sort=True)
    }


@torch.no_grad()
def _state(model: HSTU, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The model's user state over the newest window of one history, unbatched (D,)."""
    t = model.config.max_len
    return model.user_state(torch.from_numpy(items[-t:])[None], torch.from_numpy(ts[-t:])[None])[0].numpy()


def test_user_state_rows_are_the_adapted_models(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, _ = _use_copy(adapted)
    bundle, merged = adapted["bundle"], adapted["merged"]
    bare = load_fm(bundle.fm_version)
    histories = _histories(cfg, adapted["as_of"])
    users = sorted(histories)[::10]  # every tenth user: the reference is computed one user at a time
    got = adapted["store"].get_online_features(
        features=["user_state:state", "user_state:n_events"],
        entity_rows=[{"user_id": u, "bundle_id": bundle.bundle_id} for u in users],
    ).to_dict()
    assert got["n_events"] == [len(histories[u][0]) for u in users]
    rows = np.asarray(got["state"], dtype=np.float32)  # (U, D)
    want = np.stack([_state(merged, *histories[u]) for u in users])
    unadapted = np.stack([_state(bare, *histories[u]) for u in users])
    np.testing.assert_allclose(rows, want, rtol=0, atol=1e-4)
    assert np.abs(rows - unadapted).max() > 100 * np.abs(rows - want).max()


def test_bundle_model_is_loaded_once_per_process(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, client = _use_copy(adapted)
    bundle = adapted["bundle"]
    first = bundle_fm.bundle_fm(cfg, client, bundle)
    assert bundle_fm.bundle_fm(cfg, client, bundle) is first  # cached: no second registry load
    bundle_fm.clear_cache()
    fresh = bundle_fm.bundle_fm(cfg, client, bundle)
    assert fresh is not first and torch.equal(fresh.model.item_embeddings(), first.model.item_embeddings())


def test_adapter_of_another_base_is_refused(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, client = _use_copy(adapted)
    bundle = adapted["bundle"]
    src = client.get_model_version(adapters.BASE_MODEL, bundle.fm_version)
    other = str(client.create_model_version(adapters.BASE_MODEL, src.source, src.run_id).version)
    mixed = bundles.register(client, bundle.parts | {"fm": other}, experiment_id(cfg.root, "materialize"))
    own = rf"adapts specrec-fm v{bundle.fm_version}, not the bundle's v{other}"
    with pytest.raises(SpecrecError, match=own):
        bundle_fm.bundle_fm(cfg, client, mixed)
    client.set_registered_model_alias(adapters.BASE_MODEL, CHAMPION, other)
    try:  # a retrained base became champion: its bundle goes without the old base's adapter
        assert bundles.champion_parts(client)["adapter"] == ""
    finally:
        client.set_registered_model_alias(adapters.BASE_MODEL, CHAMPION, bundle.fm_version)


def test_user_state_writes_on_one_day_keep_their_history(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, client = _use_copy(adapted)
    store, bundle = adapted["store"], adapted["bundle"]
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    later = events.loc[events["timestamp"] >= adapted["as_of"], "timestamp"].sort_values()
    by_day = later.groupby(later.dt.floor("D"))
    day = next(d for d, t in by_day if t.nunique() >= 2 and (t.max() + pd.Timedelta("1s")).floor("D") == d)
    times = by_day.get_group(day)
    first, second = times.min() + pd.Timedelta("1s"), times.max() + pd.Timedelta("1s")
    folder = offline_dir(store, "user_state") / f"bundle={bundle.bundle_id}"
    before = set(folder.glob("*.parquet"))
    one = update_user_state(cfg, first, bundle, store, client)
    two = update_user_state(cfg, second, bundle, store, client)
    assert one["rows_written"] > 0 and two["rows_written"] > 0 and one["mode"] == "incremental"
    files = set(folder.glob("*.parquet")) - before
    assert len(files) == 2  # same day, two files: the second write did not overwrite the first
    assert sum(len(pd.read_parquet(f)) for f in files) == one["rows_written"] + two["rows_written"]



def test_item_stats_writes_on_one_day_keep_their_history(adapted: dict) -> None:  # type: ignore[type-arg]
    cfg, _ = _use_copy(adapted)
    store = adapted["store"]
    folder = offline_dir(store, "item_stats")
    day = to_utc(adapted["as_of"]).floor("D") + pd.Timedelta("1D")
    update_item_stats(cfg, day + pd.Timedelta("1h"), store)
    first = set(folder.glob("*.parquet"))
    update_item_stats(cfg, day + pd.Timedelta("2h"), store)
    second = set(folder.glob("*.parquet"))
    assert first and first < second  # same day: the second write added files, it did not overwrite
