"""The deployment table and the as_of resolver without a server: schedules, names, the cadence check."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.common import resolve_as_of
from flows.deploy import DEPLOYMENTS, TIERS, Deployment, check_precompute_cadence, cron_period, describe
from specrec.clock import ReplayClock
from specrec.config import load_config
from specrec.errors import SpecrecError

ROOT = Path(__file__).resolve().parents[2]


def test_every_flow_module_has_one_deployment() -> None:
    flows = {p.stem for p in (ROOT / "flows").glob("*.py") if f'@flow(name="{p.stem}")' in p.read_text()}
    assert sorted(r.flow for r in DEPLOYMENTS) == sorted(flows)  # a new flow needs its row
    assert len({r.name for r in DEPLOYMENTS}) == len(DEPLOYMENTS)
    assert {r.tier for r in DEPLOYMENTS} == set(TIERS)


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="cron"):
        Deployment("update_item_stats", "nearline", "every five minutes", ())
    with pytest.raises(SpecrecError, match="tier 'hourly'"):
        Deployment("update_item_stats", "hourly", "*/5 * * * *", ())


def test_precompute_runs_once_per_speculation_window() -> None:
    window = load_config(ROOT / "params.yaml").speculation.window
    check_precompute_cadence(DEPLOYMENTS, window)
    assert cron_period("*/15 * * * *").total_seconds() == 900
    with pytest.raises(SpecrecError, match="speculation.window is 10min"):
        check_precompute_cadence(DEPLOYMENTS, "10min")
    assert "materialize_item_embeddings/nearline" in describe()


def test_a_sub_minute_cadence_is_an_interval_checked_against_the_window() -> None:
    import dataclasses
    import datetime as dt

    from prefect.client.schemas.schedules import IntervalSchedule

    fast = tuple(
        dataclasses.replace(r, cron=None, every="30s")
        if r.flow in ("speculative_precompute", "update_user_state")
        else r
        for r in DEPLOYMENTS
    )
    check_precompute_cadence(fast, "30s")  # both per-window flows every 30 seconds: consistent
    with pytest.raises(SpecrecError, match=r"runs on every='30s' .*window is 5min"):
        check_precompute_cadence(fast, "5min")
    half = tuple(
        dataclasses.replace(r, cron=None, every="30s") if r.flow == "speculative_precompute" else r
        for r in DEPLOYMENTS
    )
    with pytest.raises(SpecrecError, match="update_user_state runs on cron '\\*/5"):
        check_precompute_cadence(half, "30s")  # precompute every 30 s but user states every 5 min: refused
    row = next(r for r in fast if r.flow == "speculative_precompute")
    (schedule,) = row.schedules() or []
    assert isinstance(schedule, IntervalSchedule) and schedule.interval == dt.timedelta(seconds=30)
    assert "every 30s" in describe(fast)
    with pytest.raises(SpecrecError, match="not both"):
        Deployment("update_item_stats", "nearline", "*/5 * * * *", (), every="30s")
    with pytest.raises(SpecrecError, match="every = 'often'"):
        Deployment("update_item_stats", "nearline", None, (), every="often")


def test_as_of_words() -> None:
    params = str(ROOT / "params.yaml")
    first = ReplayClock.from_config(load_config(params).clock).cycle(1).as_of.isoformat()
    assert resolve_as_of("first", params) == first
    assert resolve_as_of("2018-02-26", params) == "2018-02-26"  # passed through unchanged
    with pytest.raises(SpecrecError, match="no flow run"):
        resolve_as_of("scheduled", params)  # outside a flow run there is no scheduled start
