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


def test_as_of_words() -> None:
    params = str(ROOT / "params.yaml")
    first = ReplayClock.from_config(load_config(params).clock).cycle(1).as_of.isoformat()
    assert resolve_as_of("first", params) == first
    assert resolve_as_of("2018-02-26", params) == "2018-02-26"  # passed through unchanged
    with pytest.raises(SpecrecError, match="no flow run"):
        resolve_as_of("scheduled", params)  # outside a flow run there is no scheduled start
