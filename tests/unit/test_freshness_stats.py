"""The freshness benchmark's statistics: the scored events' users line up with their ranks, the paired
bootstrap resamples whole users (so a gain carried by one user is not called certain), and the issue's
ratios come out of the per-cycle means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from specrec.clock import Cycle, EventLog
from specrec.fm.replay_eval import cycle_targets
from specrec.lora.evaluate import target_users
from tests.conftest import benchmark_module

ROOT = Path(__file__).resolve().parents[2]
START = pd.Timestamp("2018-01-01", tz="UTC")


def test_target_users_line_up_with_the_scored_events() -> None:
    rng = np.random.default_rng(0)
    n = 400
    ev = pd.DataFrame(
        {
            "user_idx": rng.integers(0, 15, n),
            "item_idx": rng.integers(1, 50, n),
            "timestamp": START + pd.to_timedelta(rng.uniform(-30, 30, n), unit="D"),
        }
    ).assign(event_id=np.arange(n))
    window = Cycle(1, START, START + pd.Timedelta("20D"))
    histories, targets, _ = cycle_targets(EventLog(ev), window)
    users = target_users(ev, window)
    assert len(users) == len(targets) > 0
    # each scored event's history is its user's earlier events: the last history item of event i is the
    # item of that user's previous event, which we can look up independently
    ordered = ev[ev["timestamp"] < window.as_of].sort_values(["user_idx", "timestamp", "event_id"])
    for i in rng.choice(len(users), 20, replace=False):
        mine = ordered[ordered["user_idx"] == users[i]]
        in_window = mine[mine["timestamp"] >= window.start]
        assert int(targets[i]) in set(in_window["item_idx"])
        assert len(histories.items[i]) < len(mine)


def _set(bench: Any, users: list[int], **ranks: list[int]) -> Any:
    return bench.EvalSet(np.array(users), {k: np.array(v) for k, v in ranks.items()})


def _row(s: Any, arms: tuple[str, ...]) -> dict[str, Any]:
    """A benchmark row of one cycle: per-arm means and CPU seconds."""
    means = {f"{a}_{m}@10": float(getattr(s, m)(a).mean()) for a in arms for m in ("ndcg", "hr")}
    cpu = {"lora_cpu_s": 1.0, "full_cpu_s": 20.0, "full_cpu_s_recorded": 25.0}
    return means | cpu | {"lora_gate": "promoted"}


def test_bootstrap_resamples_users_and_ratios() -> None:
    bench = benchmark_module("freshness")
    # cycle 1: three users, ten events each; full and lora hit (rank 0) where frozen misses (rank 50),
    # but only on user 7's events
    users = [5] * 10 + [6] * 10 + [7] * 10
    frozen = [50] * 30
    better = [50] * 20 + [0] * 10
    sets = [_set(bench, users, frozen=frozen, lora=better, full=better)]
    boot = bench.paired_bootstrap(sets, n_boot=2000, seed=0)
    # the same users are drawn for every arm: equal arms differ by exactly 0 in every resample
    assert boot["lora_minus_full_ci95"] == [0.0, 0.0]
    assert boot["gain_recovered_ci95"] is None  # resamples without user 7 have no full gain at all
    # one user in three carries the gain: about (2/3)^3 = 30% of user resamples lack it, so the interval
    # reaches 0 (an event-level bootstrap would put its lower end near 1/3)
    assert boot["full_gain_ci95"][0] == 0.0 and boot["full_gain_ci95"][1] > 1 / 3
    assert 0.6 < boot["p_full_gain_positive"] < 0.8

    # two cycles with the gain spread over every user: a certain gain; lora recovers half of it
    users = [1, 1, 2, 2, 3, 3, 4, 4]
    half = [0, 50, 0, 50, 0, 50, 0, 50]
    sets = [_set(bench, users, frozen=[50] * 8, lora=half, full=[0] * 8) for _ in range(2)]
    boot = bench.paired_bootstrap(sets, n_boot=500, seed=0)
    # every user has one hit of two for lora: the ratio is 0.5 in every resample
    assert boot["full_gain_ci95"] == [1.0, 1.0] and boot["gain_recovered_ci95"] == [0.5, 0.5]
    for s in sets:
        s.ranks.update({a: s.ranks["frozen"] for a in bench.REFERENCES})
    rows = [_row(s, bench.ARMS + bench.REFERENCES) for s in sets]
    summary = bench.summarise(rows, sets, n_boot=100)
    assert summary["gain_recovered"] == 0.5 and summary["compute_ratio"] == 0.05
    assert summary["compute_ratio_recorded"] == 0.04
    assert summary["pooled_gain_recovered"] == 0.5 and summary["events_scored"] == 16


def test_gate_interval_resamples_whole_users() -> None:
    """The gate's evidence (specrec.lora.evaluate.paired_interval): a gain carried by one user of five is
    not called certain, the same gain spread over every user is; equal scores give [0, 0]; scores of
    different windows are refused with the counts named."""
    import math

    from specrec.lora.evaluate import HoldoutScore, paired_interval

    def holdout(ndcg: np.ndarray) -> HoldoutScore:
        return HoldoutScore({"ndcg@10": float(ndcg.mean())}, list(1.0 - ndcg))

    users = np.repeat(np.arange(5), 20)
    base = np.zeros(100)
    one_user = base.copy()
    one_user[:20] = 0.5  # user 0's events only: +0.1 on average
    low, high = paired_interval(holdout(base), holdout(one_user), users)
    assert low <= 0.0 < 0.1 < high  # resampled by user, the interval reaches a sample without user 0
    spread = base + 0.05 + 0.025 * users  # every user gains, +0.05 to +0.15 (+0.1 on average)
    low, high = paired_interval(holdout(base), holdout(spread), users)
    assert 0.05 < low < 0.1 < high < 0.15
    assert paired_interval(holdout(spread), holdout(spread), users) == (0.0, 0.0)
    empty = HoldoutScore({"ndcg@10": math.nan}, [])
    assert all(math.isnan(v) for v in paired_interval(empty, empty, np.array([])))
    with pytest.raises(ValueError, match="100 and 100 scored events for 99 users' events"):
        paired_interval(holdout(base), holdout(spread), users[:99])
