"""Synthetic log generator: Zipf popularity, release times, sessions, determinism, the real ingest, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from specrec.cli import app
from specrec.config import Config
from specrec.data.ingest import ingest
from specrec.data.prepare import prepare
from specrec.data.synthetic import (
    SynthConfig,
    SynthError,
    catalogue,
    data_config,
    iter_events,
    traffic_schedule,
    with_settings,
    write,
)

SMALL = SynthConfig(users=2_000, items=1_000, chunk_users=700)


def _log(cfg: SynthConfig) -> pd.DataFrame:
    """The whole log of a small config as one frame."""
    return pd.concat(iter_events(cfg), ignore_index=True)


def _zipf_slope(cfg: SynthConfig) -> float:
    """Least-squares slope of log(event count) over log(popularity rank), on ranks expected >= 20 events."""
    log, cat = _log(cfg), catalogue(cfg)
    counts = np.bincount(log["item_id"].to_numpy() - 1, minlength=cfg.items)
    rank = cat.frame()["popularity_rank"].to_numpy()
    fit = len(log) * cat.weight / cat.weight.sum() >= 20
    return float(np.polyfit(np.log(rank[fit]), np.log(np.maximum(counts[fit], 1)), 1)[0])


@pytest.mark.parametrize("exponent", [0.8, 1.2])
def test_item_counts_follow_the_zipf_exponent(exponent: float) -> None:
    pure = SynthConfig(
        users=3_000, items=2_000, zipf_exponent=exponent, fresh_share=0, clusters=0, initial_items=1.0
    )
    assert _zipf_slope(pure) == pytest.approx(-exponent, abs=0.06)
    # fresh-item traffic, arrivals and taste clusters flatten the head a little, never the shape
    assert _zipf_slope(dataclasses.replace(pure, fresh_share=0.1, clusters=20, initial_items=0.5)) == (
        pytest.approx(-exponent, abs=0.2)
    )


def test_no_interaction_before_release_and_fresh_items_get_traffic() -> None:
    log = _log(SMALL)
    truth = catalogue(SMALL).frame().set_index("item_id")
    released = truth.loc[log["item_id"], "released_at"].to_numpy()
    assert (log["timestamp"].to_numpy() >= released).all()
    arrived = truth.index[truth["released_at"] > pd.Timestamp(SMALL.start, tz="UTC")]
    assert len(arrived) >= 0.4 * SMALL.items and log["item_id"].isin(arrived).mean() > 0.1
    age = log["timestamp"].to_numpy() - released
    assert (age < pd.Timedelta(days=SMALL.fresh_days)).mean() >= SMALL.fresh_share


def test_sessions_make_gaps_bimodal_with_a_daily_cycle() -> None:
    log = _log(SMALL)
    t = log["timestamp"].astype("int64").to_numpy() // 10**9
    same_user = log["user_id"].to_numpy()[1:] == log["user_id"].to_numpy()[:-1]
    gaps = np.diff(t)[same_user]
    assert gaps.min() >= 1  # each user's events strictly in time order: no exact duplicates possible
    hist, _ = np.histogram(np.log10(gaps), bins=np.arange(0, 7.5, 0.5))
    session_mode, valley, between_mode = hist[:5].max(), hist[5:8].min(), hist[8:].max()
    assert valley < 0.25 * session_mode and valley < 0.5 * between_mode, hist
    assert np.median(gaps[gaps < 3600]) == pytest.approx(SMALL.session_gap_s, rel=0.3)
    hours = log["timestamp"].dt.hour.value_counts()
    assert abs(int(hours.idxmax()) - SMALL.peak_hour) <= 2 and hours.max() > 2 * hours.min()


def test_same_seed_same_log_other_seed_other_log() -> None:
    a, b = _log(SMALL), _log(SMALL)
    pd.testing.assert_frame_equal(a, b)
    c = _log(dataclasses.replace(SMALL, seed=1))
    assert not a["item_id"].equals(c["item_id"])


def test_the_real_ingest_accepts_the_log_and_prepare_consumes_it(project_cfg: Config, tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, users=300)
    manifest = write(cfg, tmp_path / "synth", progress=False)
    written = pd.read_parquet(tmp_path / "synth" / "interactions.parquet")
    result = ingest(dataclasses.replace(project_cfg, data=data_config(tmp_path / "synth")))
    assert result.metrics["interactions_quarantined"] == 0 and result.metrics["items_quarantined"] == 0
    assert result.metrics["interactions_ok"] == manifest["rows"] == len(written)
    assert result.metrics["items_without_metadata"] == 0 and len(result.items) == cfg.items
    pd.testing.assert_frame_equal(result.interactions, written)  # already in the canonical schema
    prepared = prepare(result.interactions, result.items)
    assert len(prepared.users) == cfg.users and prepared.interactions["item_idx"].min() >= 1


def test_traffic_keeps_the_rate_with_heavy_users_and_repeat_visits() -> None:
    cfg = dataclasses.replace(SMALL, diurnal_amplitude=0.0)
    offsets, user_ids = traffic_schedule(cfg, rate_rps=200, duration_s=30)
    assert len(offsets) / 30 == pytest.approx(200, rel=0.1)
    assert (np.diff(offsets) >= 0).all() and offsets.min() >= 0 and offsets.max() < 30
    counts = np.sort(np.bincount(user_ids, minlength=cfg.users + 1))[::-1]
    assert counts[: cfg.users // 100].sum() > 0.15 * counts.sum()  # top 1% of users: a heavy share
    again = traffic_schedule(cfg, rate_rps=200, duration_s=30)
    np.testing.assert_array_equal(again[1], user_ids)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zipf_exponent": -1.0}, r"zipf_exponent = -1\.0 is not allowed; expected a number in \[0, 5\]"),
        ({"activity_alpha": 1.0}, r"activity_alpha = 1\.0 .*\(1, 20\]"),
        ({"initial_items": 0.0}, r"initial_items = 0\.0 .*some items must exist"),
        ({"clusters": 5_000}, r"clusters = 5000 .*items=1000"),
        ({"start": "yesterday"}, r"start = 'yesterday' .*a date"),
        ({"days": 3_000}, r"days = 3000 .*before 2030"),
    ],
)
def test_bad_parameters_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(SynthError, match=message):
        dataclasses.replace(SMALL, **change)


def test_cli_reports_a_bad_parameter_in_one_line(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["synth", "--users", "0", "--out", str(tmp_path / "s")])
    assert out.exit_code == 1
    assert "users = 0 is not allowed" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "s").exists()


def test_settings_are_typed_and_unknown_names_rejected() -> None:
    cfg = with_settings(SMALL, ["fresh_share=0.25", "ratings=false", "clusters=3"])
    assert (cfg.fresh_share, cfg.ratings, cfg.clusters) == (0.25, False, 3)
    with pytest.raises(SynthError, match=r"--set = 'nope=1' .*fresh_share"):
        with_settings(SMALL, ["nope=1"])
    with pytest.raises(SynthError, match=r"clusters = 'many' .*type int"):
        with_settings(SMALL, ["clusters=many"])


def test_taste_clusters_give_order_signal() -> None:
    log, cat = _log(SMALL), catalogue(SMALL)
    cluster, user = cat.cluster[log["item_id"].to_numpy() - 1], log["user_id"].to_numpy()
    same_user = user[1:] == user[:-1]
    in_order = (cluster[1:] == cluster[:-1])[same_user].mean()
    shuffled = cluster[np.lexsort((np.random.default_rng(0).random(len(user)), user))]
    any_order = (shuffled[1:] == shuffled[:-1])[same_user].mean()
    assert in_order > any_order + 0.1 and any_order > 2 / SMALL.clusters  # the next item follows the last
