"""ADWIN drift monitor: quiet on a stationary error stream, alarms on a shift, state survives a restart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from specrec.config import LoraDriftConfig
from specrec.errors import ConfigError, SpecrecError
from specrec.lora.drift import DriftMonitor


def _errors(hit_rate: float, n: int, rng: np.random.Generator) -> list[float]:
    """Per-event 1 - NDCG@10: a hit at rank r < 10 has error 1 - 1/log2(r + 2), a miss has error 1."""
    hit, rank = rng.random(n) < hit_rate, rng.integers(0, 10, n)
    return list(np.where(hit, 1.0 - 1.0 / np.log2(rank + 2), 1.0))


def test_stationary_stream_never_alarms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(LoraDriftConfig(), tmp_path / "drift.json")
    checks = [monitor.check(f"c{k}", _errors(0.05, 200, rng), seed=k) for k in range(8)]
    assert not any(c.alarm for c in checks)
    assert all(c.decision == "none" for c in checks)
    assert checks[-1].width_after == 1600


def test_shift_alarms_with_statistic_and_decision(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "drift.json"
    monitor = DriftMonitor(LoraDriftConfig(), path)
    for k in range(4):
        assert not monitor.check(f"c{k}", _errors(0.03, 200, rng), seed=k).alarm
    shifted = monitor.check("c4", _errors(0.4, 200, rng), seed=4)
    assert shifted.alarm and shifted.decision == "retrain_base"
    assert shifted.mean_after < shifted.mean_before  # the error fell: the window kept the recent part
    assert shifted.width_after < shifted.width_before + 200
    stored = json.loads(path.read_text())
    assert [c["alarm"] for c in stored["cycles"]] == [False] * 4 + [True]


def test_state_survives_a_restart_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    streams = [_errors(0.05, 150, rng) for _ in range(3)]
    one = DriftMonitor(LoraDriftConfig(), tmp_path / "a.json")
    for k, s in enumerate(streams):
        last_one = one.check(f"c{k}", s, seed=k)
    for k, s in enumerate(streams):  # a new monitor per cycle: what separate flow runs do
        last_many = DriftMonitor(LoraDriftConfig(), tmp_path / "b.json").check(f"c{k}", s, seed=k)
    assert last_one == last_many


def test_reset_and_empty_cycle(tmp_path: Path) -> None:
    monitor = DriftMonitor(LoraDriftConfig(), tmp_path / "d.json")
    monitor.check("c0", [1.0, 0.5, 1.0], seed=0)
    monitor.reset("c0", "retrained")
    empty = DriftMonitor(LoraDriftConfig(), tmp_path / "d.json").check("c1", [], seed=1)
    assert not empty.alarm and empty.width_before == 0 and math.isnan(empty.cycle_error)


def test_corrupt_state_and_bad_config_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "drift.json"
    bad.write_text("{not json")
    with pytest.raises(SpecrecError, match=str(bad)):
        DriftMonitor(LoraDriftConfig(), bad)
    with pytest.raises(ConfigError, match="lora.drift.delta"):
        LoraDriftConfig(delta=1.5)
