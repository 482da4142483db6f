"""The speculation benchmark's paired comparison: per-request NDCG@10 differences with bootstrap intervals
over requests, and the variants on the requests that are the first of their window."""

from __future__ import annotations

import numpy as np

from specrec.speculation.replay import PAIRED, paired_gains


def _ndcg(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    without = np.where(rng.random(4000) < 0.05, 1 / np.log2(rng.integers(0, 10, 4000) + 2), 0.0)
    better = without.copy()
    lift = rng.random(4000) < 0.05
    better[lift] = 1.0  # a clear gain on 5% of the requests
    return {
        "without": without,
        "with": better,
        "with_current": without.copy(),  # no row saw every earlier event: every hit counts as a miss
        "full_fm": better.copy(),
        "full_fm_window": without.copy(),
        "all_pairs": better.copy(),
        "all_pairs_window": better.copy(),
    }


def test_intervals_bracket_the_mean_and_separate_a_real_gain_from_none() -> None:
    ndcg = _ndcg()
    first = np.zeros(4000, bool)
    first[:1000] = True
    out = paired_gains(ndcg, first, seed=0)
    for a, b in PAIRED:
        low, mean, high = (out[f"ndcg@10_{a}_minus_{b}{e}"] for e in ("_ci_low", "", "_ci_high"))
        assert low <= mean <= high
        assert np.isclose(mean, (ndcg[a] - ndcg[b]).mean())
    assert out["ndcg@10_with_minus_without_ci_low"] > 0  # the gain is beyond noise
    none = "ndcg@10_full_fm_window_minus_without"
    assert out[none] == out[f"{none}_ci_low"] == out[f"{none}_ci_high"] == 0  # no difference: none found
    assert out["ndcg@10_full_fm_minus_with"] == 0  # identical per request: no difference at all
    assert out["requests_first_in_window"] == 1000
    assert np.isclose(out["ndcg@10_with_first_in_window"], ndcg["with"][:1000].mean())
    again = paired_gains(ndcg, first, seed=0)  # seeded: the same intervals every run
    assert again.keys() == out.keys()
    assert np.array_equal([again[k] for k in out], list(out.values()), equal_nan=True)


def test_ratio_intervals_come_from_the_same_resamples_and_vanish_without_a_gain() -> None:
    ndcg = _ndcg()
    first = np.zeros(4000, bool)
    out = paired_gains(ndcg, first, seed=0)
    # "with" equals the full FM per request: every resample's ratio is exactly 1
    assert out["quality_recovered_ci_low"] == out["quality_recovered_ci_high"] == 1.0
    # the window-start full FM gains nothing over "without": no denominator, no interval
    assert np.isnan(out["quality_recovered_window_start_ci_low"])
    half = dict(ndcg, all_pairs=ndcg["with"] + (ndcg["with"] - ndcg["without"]))  # twice the gain of "with"
    low, high = (paired_gains(half, first)[f"quality_recovered_of_all_pairs_ci_{e}"] for e in ("low", "high"))
    assert low == high == 0.5
    # only current rows used, and none was: nothing recovered in any resample
    current = [out[f"quality_recovered_current_rows_ci_{e}"] for e in ("low", "high")]
    assert current == [0.0, 0.0]
