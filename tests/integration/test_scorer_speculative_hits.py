"""A speculative hit reaches the score: through a real uvicorn server and HTTP client, with the temp
project's real Feast store and MLflow registry, a `speculative` row holding the bundle FM's own pair
vectors and scores changes the scores of exactly the items it holds, to what the bundle's thin scorer
gives with those FM pairs; an expired row changes nothing."""

from __future__ import annotations

import dataclasses
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.bundle_fm import bundle_fm
from specrec.nearline.materialize import materialize_items
from specrec.nearline.store import apply
from specrec.nearline.user_state import update_user_state
from specrec.online.app import build_scorer
from specrec.online.check import serve_in_thread
from specrec.online.service import create_app
from specrec.online.train_scorer import train_scorer
from specrec.speculation.pairs import _left_pad
from specrec.speculation.precompute import write_rows
from specrec.tracking import experiment_id
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _row(
    user: int, bundle_id: str, items: np.ndarray, vec: np.ndarray, score: np.ndarray, expires: object
) -> pd.DataFrame:
    """One `speculative` row as precompute writes it."""
    return pd.DataFrame(
        {
            "user_id": [user],
            "bundle_id": [bundle_id],
            "item_ids": [np.asarray(items, np.int64)],
            "pair_repr": [vec.reshape(-1).astype(np.float32)],
            "pair_score": [score.astype(np.float32)],
            "expires_at": [expires],
            "event_timestamp": [pd.Timestamp("2018-02-01", tz="UTC")],
        }
    )


def test_a_hit_scores_with_the_fm_pair_and_a_miss_does_not(tiny: TinyProject) -> None:
    cfg = dataclasses.replace(
        tiny.cfg, scorer=dataclasses.replace(tiny.cfg.scorer, epochs=3, max_examples=120, candidates=50)
    )
    as_of = ReplayClock.from_config(cfg.clock).cycle(1).as_of
    scorer_version = train_scorer(cfg, as_of)["version"]
    store, client = apply(cfg), mlflow.MlflowClient()
    parts = bundles.champion_parts(client) | {"scorer": scorer_version, "codebook": "hit-test"}
    bundle = bundles.register(client, parts, experiment_id(cfg.root, "materialize"))
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    bundles.promote_serving(client, bundle)
    update_user_state(cfg, as_of, bundle, store)
    scorer, _ = build_scorer(cfg, watch_seconds=3600)
    assert scorer.state.bundle.bundle_id == bundle.bundle_id and scorer.state.scorer is not None

    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    known = events[events["timestamp"] < as_of].sort_values(["timestamp", "event_id"], kind="stable")
    user = int(known["user_id"].iloc[-1])
    mine = known[known["user_id"] == user]
    with serve_in_thread(create_app(scorer)) as url:
        top = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 12}).json()
        assert top["speculative_hits"] == 0 and not top["degraded"]
        items = top["items"]

        def scores() -> dict[int, float]:
            body = httpx.post(f"{url}/score", json={"user_id": user, "item_ids": items}).json()
            assert not body["degraded"] and not body["unknown_items"]
            return {int(k): v for k, v in body["scores"].items()}

        before = scores()
        # the bundle FM's own pair vectors and scores for the first 8 items, from the user's history
        fm = bundle_fm(cfg, client, bundle).model
        idx_of = dict(zip(events["item_id"], events["item_idx"], strict=False))
        held = np.asarray(items[:8], np.int64)
        hist, ts = _left_pad(
            [(mine["item_idx"].to_numpy(), mine["timestamp"].astype("int64").to_numpy() // 10**9)],
            fm.config.max_len,
        )
        with torch.no_grad():
            vec, fm_score = fm.pair_repr(hist, ts, torch.as_tensor([[idx_of[i] for i in held]]))
        vec, fm_score = vec[0].numpy(), fm_score[0].numpy()
        now = pd.Timestamp(time.time(), unit="s", tz="UTC")
        expired = _row(user, bundle.bundle_id, held, vec, fm_score, now - pd.Timedelta("1s"))
        write_rows(cfg, store, expired, bundle.bundle_id, now)
        assert scores() == before  # an expired row is a miss: nothing changes
        fresh = _row(user, bundle.bundle_id, held, vec, fm_score, now + pd.Timedelta("1h"))
        write_rows(cfg, store, fresh, bundle.bundle_id, now)
        after = scores()

    for i in items[8:]:  # not in the row: scored as before
        assert after[i] == pytest.approx(before[i], abs=1e-5)
    changed = [abs(after[i] - before[i]) for i in held]
    assert max(changed) > 1e-3  # a hit changes the score
    # ... to the bundle scorer's own answer with the FM pairs as its hit input
    state = scorer.state
    rows = np.asarray([state.row_of[int(i)] for i in held])
    user_vec = store.get_online_features(
        features=["user_state:state"], entity_rows=[{"user_id": user, "bundle_id": bundle.bundle_id}]
    ).to_dict()["state"][0]
    with torch.no_grad():
        want = state.scorer(
            torch.as_tensor(np.asarray(user_vec, np.float32))[None],
            torch.as_tensor(state.embeddings[rows])[None],
            torch.as_tensor(vec)[None],
            torch.ones(1, len(held)),
            torch.as_tensor(state.stats[rows])[None],
        )[0].numpy()
    assert np.allclose([after[int(i)] for i in held], want, atol=1e-4)
