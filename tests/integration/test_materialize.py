"""Nearline item materialization on the real Feast store (SQLite) and MLflow registry of a temp project:
complete, incremental and idempotent writes, blue/green bundles, a SIGKILL midway, and bad rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from specrec.clock import ReplayClock
from specrec.errors import SpecrecError
from specrec.nearline import bundles
from specrec.nearline.materialize import check_rows, load_fm, materialize_items
from specrec.nearline.store import apply, offline_dir
from specrec.registry import CHAMPION
from specrec.tracking import experiment_id
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _exp(tiny: TinyProject) -> str:
    """The temp project's `materialize` experiment (artifacts inside the project, never ./mlruns)."""
    return experiment_id(tiny.cfg.root, "materialize")


def _read(store, ids: list[int], bundle_id: str) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """What a plain Feast client reads for these items of this bundle."""
    rows = [{"item_id": i, "bundle_id": bundle_id} for i in ids]
    return store.get_online_features(
        features=["item_repr:embedding", "item_repr:item_idx"], entity_rows=rows
    ).to_dict()


@pytest.fixture(scope="module")
def store(tiny_project: TinyProject):  # type: ignore[no-untyped-def]
    return apply(tiny_project.cfg)


def _items(tiny: TinyProject) -> pd.DataFrame:
    return pd.read_parquet(tiny.cfg.path(tiny.cfg.paths.prepared) / "items.parquet")


def _new_fm_champion(tiny: TinyProject) -> str:
    """Register the trained FM again as a new version and make it champion: a new bundle."""
    client = mlflow.MlflowClient()
    src = client.get_model_version("specrec-fm", tiny.fm.version)
    version = client.create_model_version("specrec-fm", src.source, src.run_id).version
    client.set_registered_model_alias("specrec-fm", CHAMPION, str(version))
    return str(version)


def test_complete_then_noop_then_incremental(tiny: TinyProject, store) -> None:  # type: ignore[no-untyped-def]
    cfg, client = tiny.cfg, mlflow.MlflowClient()
    clock = ReplayClock.from_config(cfg.clock)
    # a bundle of its own (other tests materialize the champions' bundle in the same project)
    exp = bundles.register(client, bundles.champion_parts(client) | {"codebook": "test-complete"}, _exp(tiny))
    first = materialize_items(cfg, clock.cycle(1).as_of, exp, store, client, progress=False)
    items = _items(tiny)
    known = items[items["first_seen"] < clock.cycle(1).as_of]
    assert first.mode == "complete" and first.rows_written == len(known) and first.promoted
    assert bundles.serving(client).bundle_id == exp.bundle_id

    got = _read(store, known["item_id"].tolist(), exp.bundle_id)
    table = load_fm(exp.fm_version).item_embeddings().detach().numpy()
    assert np.array_equal(np.asarray(got["embedding"], dtype=np.float32), table[known["item_idx"].to_numpy()])
    assert got["item_idx"] == known["item_idx"].tolist()

    again = materialize_items(cfg, clock.cycle(1).as_of, exp, store, client, progress=False)
    assert again.mode == "noop" and again.rows_written == 0

    second = materialize_items(cfg, clock.cycle(2).as_of, exp, store, client, progress=False)
    new = items[(items["first_seen"] >= clock.cycle(1).as_of) & (items["first_seen"] < clock.cycle(2).as_of)]
    assert second.mode == "incremental" and second.rows_written == len(new) > 0
    assert all(e is not None for e in _read(store, new["item_id"].tolist(), exp.bundle_id)["embedding"])
    parts = list((offline_dir(store, "item_repr") / f"bundle={exp.bundle_id}").glob("*.parquet"))
    assert sum(len(pd.read_parquet(p)) for p in parts) == len(known) + len(new)  # offline history too


def test_sigkill_midway_then_rerun_is_complete_and_never_mixed(tiny: TinyProject, store) -> None:  # type: ignore[no-untyped-def]
    cfg, client = tiny.cfg, mlflow.MlflowClient()
    as_of = ReplayClock.from_config(cfg.clock).cycle(2).as_of
    old = bundles.serving(client)
    assert old is not None and bundles.is_complete(client, old)
    _new_fm_champion(tiny)
    new = bundles.register(client, bundles.champion_parts(client), _exp(tiny))
    assert new.bundle_id != old.bundle_id

    params = tiny.params.read_text().replace("write_batch_rows: 50000", "write_batch_rows: 200")
    slow = tiny.cfg.root / "params_small_batches.yaml"
    slow.write_text(params)
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    cmd = [
        str(Path(sys.executable).parent / "specrec"),
        "nearline",
        "items",
        "--as-of",
        str(as_of.date()),
        "--params",
        str(slow),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = offline_dir(store, "item_repr") / f"bundle={new.bundle_id}"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.parquet"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the writer finished before it could be killed; make the batches smaller"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # After the crash: the new bundle is incomplete and not served; the served bundle is whole.
    assert not bundles.is_complete(client, new)
    assert bundles.serving(client).bundle_id == old.bundle_id
    items = _items(tiny)
    known = items[items["first_seen"] < as_of]["item_id"].tolist()
    assert all(e is not None for e in _read(store, known, old.bundle_id)["embedding"])
    partial = _read(store, known, new.bundle_id)["embedding"]
    assert 0 < sum(e is not None for e in partial) < len(known)  # the kill really landed midway

    result = materialize_items(cfg, as_of, new, store, client, progress=False)
    assert result.mode == "complete" and result.promoted
    assert bundles.serving(client).bundle_id == new.bundle_id
    assert all(e is not None for e in _read(store, known, new.bundle_id)["embedding"])  # nothing lost
    assert all(
        e is not None for e in _read(store, known, old.bundle_id)["embedding"]
    )  # old kept for rollback


def test_bad_embeddings_are_refused_with_ids() -> None:
    frame = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "embedding": [np.ones(4), np.array([1, np.nan, 0, 0]), np.ones(3), np.array([np.inf, 0, 0, 0])],
        }
    )
    with pytest.raises(
        SpecrecError, match=r"3 item embeddings are not finite 4-vectors \(item_id \[2, 3, 4\]"
    ):
        check_rows(frame, 4)
    check_rows(frame.iloc[:1], 4)


def test_incomplete_bundle_cannot_serve(tiny: TinyProject) -> None:
    client = mlflow.MlflowClient()
    parts = bundles.champion_parts(client) | {"codebook": "999"}  # a bundle nobody materialized
    bundle = bundles.register(client, parts, _exp(tiny))
    with pytest.raises(SpecrecError, match="not completely materialized"):
        bundles.promote_serving(client, bundle)
    assert bundles.register(client, parts, _exp(tiny)).version == bundle.version  # registering is idempotent


def test_non_finite_model_output_writes_nothing(tiny: TinyProject) -> None:
    from specrec.nearline.materialize import check_table

    model = load_fm(tiny.fm.version)
    items = _items(tiny).head(50)
    check_table(model, items)
    with torch.no_grad():
        model.item_emb.ids.weight[int(items["item_idx"].iloc[7])] = float("nan")
    with pytest.raises(
        SpecrecError, match=rf"1 item embeddings are not finite \(item_id \[{items['item_id'].iloc[7]}\]"
    ):
        check_table(model, items)
