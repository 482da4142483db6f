"""The freshness benchmark's arms are the pipeline's own paths: the frozen base and the daily full retrain
are the FM recipe of params.yaml `fm` (with the epoch budget), the daily LoRA arm runs run_cycle against a
throw-away MLflow store (the project's store is not touched), trained FMs are reused from the cache, and
the figures are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlflow
from tests.conftest import benchmark_module
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_arms_are_the_pipeline_paths(tiny: TinyProject, tmp_path: Path) -> None:
    fb = benchmark_module("freshness")
    cfg = fb.recipe(tiny.cfg, 1)
    uri = mlflow.get_tracking_uri()
    result = fb.run(cfg, 1, tmp_path / "cache", n_boot=50, progress=False)
    row = result["cycles"][0]

    # frozen, reseeded and the cycle's full retrain: three trainings of the fm recipe, with its model
    trained = sorted((tmp_path / "cache").iterdir())
    assert len(trained) == 3
    for folder in trained:
        model_cfg = json.loads((folder / "config.json").read_text())["model_config"]
        assert {k: model_cfg[k] for k in ("dim", "max_len", "n_layers")} == {
            "dim": cfg.fm.dim,
            "max_len": cfg.fm.max_len,
            "n_layers": cfg.fm.n_layers,
        }
        train_cfg = json.loads((folder / "config.json").read_text())["train_config"]
        assert train_cfg["max_epochs"] == 1 and train_cfg["time_budget_s"] is None
        assert train_cfg["pair_loss_weight"] == cfg.fm.train.pair_loss_weight
        assert train_cfg["random_windows"] == cfg.fm.train.random_windows
    assert result["frozen_base"]["epochs"] == 1 and row["full_epochs"] == 1

    # the LoRA arm went through the daily flow's run_cycle: gated, trained on the cycle's events
    assert row["lora_gate"] in ("promoted", "rejected") and row["lora_train_targets"] > 0
    assert 0 < row["lora_cpu_s"] < row["lora_cycle_cpu_s"]
    assert row["events_scored"] > 0 and row["users_scored"] > 0
    assert set(fb.issue_shape(result | {"command": "x"})["cycles"][0]) == set(fb.ISSUE_CYCLE_KEYS)

    # the project's own store saw nothing of it, and MLflow points back at it
    assert mlflow.get_tracking_uri() == uri
    for tag in ("stage = 'freshness_benchmark'", "prefect_flow_run_id = 'freshness-benchmark'"):
        assert len(mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.{tag}")) == 0

    # the retrain's cost in the compute ratio is measured in this run: two epochs of its recipe (the first
    # with the one-off costs), the steady second for each further epoch (here the retrain trained one)
    two, steady = row["full_two_epochs_cpu_s"], row["full_epoch_cpu_s"]
    assert 0 < steady < two and row["full_cpu_s"] == two + (row["full_epochs"] - 2) * steady
    assert result["compute_ratio"] == row["lora_cpu_s"] / row["full_cpu_s"]
    assert result["compute_ratio_recorded"] == row["lora_cpu_s"] / row["full_cpu_s_recorded"]

    # a second run reuses the trained FMs (and their recorded CPU seconds) and gives the same figures
    again = fb.run(cfg, 1, tmp_path / "cache", n_boot=50, progress=False)["cycles"][0]
    assert again["full_cached"] and again["full_cpu_s_recorded"] == row["full_cpu_s_recorded"]
    for key in ("frozen_ndcg@10", "full_ndcg@10", "lora_ndcg@10", "challenger_ndcg@10"):
        assert again[key] == row[key], key

    # two seeds: every arm again with the recipe's and the adapter's seeds moved by one, averaged per cycle
    both = fb.run(cfg, 1, tmp_path / "cache", n_boot=50, progress=False, seeds=2)
    runs = both["seed_runs"]
    assert [r["fm_seed_offset"] for r in runs] == [0, 1]
    assert both["fm_seeds"] == [cfg.fm.train.seed, cfg.fm.train.seed + 1]
    for key in ("frozen_ndcg@10", "full_ndcg@10", "lora_ndcg@10"):
        assert runs[0][key] == row[key], key
        assert both["cycles"][0][key] == pytest.approx((runs[0][key] + runs[1][key]) / 2), key
    assert runs[1]["frozen_ndcg@10"] == row["reseeded_ndcg@10"]  # seed offset 1's base is the reseeded one
    assert both["events_scored"] == row["events_scored"] and both["cycles"][0]["as_of"] == row["as_of"]
    assert both["cycles"][0]["seeds"] == 2 and "fm_seed_offset" not in both["cycles"][0]
    assert len(list((tmp_path / "cache").iterdir())) == 5  # + the full retrain of offset 1, the base of 2


def test_throwaway_store_leaves_no_tracking_uri_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no MLflow URI set before, none is set after: mlflow.set_tracking_uri sets the variable, and a
    restored default (sqlite:///mlflow.db) sent the benchmark's own run into the cwd's mlflow.db."""
    import os

    fb = benchmark_module("freshness")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with fb.mlflow_store(tmp_path):
        assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///" + str(tmp_path))
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    with fb.mlflow_store(tmp_path):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////somewhere/else.db"


def test_tuning_over_seeds_scores_validation_cycles_only(tiny: TinyProject, tmp_path: Path) -> None:
    """benchmarks/freshness_tune.py: the validation cycles end where the benchmark's scored ones begin,
    a setting over two seeds is the mean of each seed's own run (seed 0's is the one-seed run), and the
    issue's ratios on the validation cycles follow from the means."""
    from specrec.clock import ReplayClock

    ft = benchmark_module("freshness_tune")
    common = ["--params", str(tiny.params), "--cycles", "1", "--epochs", "1", "--cache", str(tmp_path / "c")]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    ft.main([*common, "--full", "--only", "params", "--out", str(one)])
    ft.main([*common, "--full", "--seeds", "2", "--only", "params", "--out", str(two)])
    a, b = json.loads(one.read_text()), json.loads(two.read_text())

    clock = ft.validation_clock(tiny.cfg, 1)
    cycles = ReplayClock.from_config(clock.clock).cycles()
    assert cycles[-1].as_of == ReplayClock.from_config(tiny.cfg.clock).start
    assert [c["as_of"] for c in a["settings"]["params"]["cycles"]] == [cycles[0].name]

    single, seeds = a["settings"]["params"], b["settings"]["params"]
    assert b["seed_offsets"] == [0, 1] and a["seed_offsets"] == [0]
    assert seeds["per_seed"][0]["mean_gain"] == single["mean_gain"]  # seed 0 is the one-seed run
    for key in ("mean_gain", "mean_gain_ungated", "lora_cpu_s"):
        assert seeds[key] == pytest.approx((seeds["per_seed"][0][key] + seeds["per_seed"][1][key]) / 2), key
    for r in (single, *seeds["per_seed"]):
        c = r["cycles"][0]
        assert r["mean_gain"] == pytest.approx(c["lora_ndcg@10"] - c["frozen_ndcg@10"])
    full = b["full_retrain"]
    assert (
        full["mean_gain"] == pytest.approx(sum(s["mean_gain"] for s in full["per_seed"]) / 2)
        and full["per_seed"][0]["mean_gain"] == a["full_retrain"]["mean_gain"]
    )
    full_gains = [c["full_ndcg@10"] - c["frozen_ndcg@10"] for s in full["per_seed"] for c in s["cycles"]]
    assert full["gain_se"] == pytest.approx(abs(full_gains[0] - full_gains[1]) / 2)  # sd / sqrt(2), n = 2
    if full["mean_gain"]:
        assert seeds["gain_recovered"] == pytest.approx(seeds["mean_gain"] / full["mean_gain"])
    assert seeds["compute_ratio"] == pytest.approx(seeds["lora_cpu_s"] / full["full_cpu_s"])

    # a later --only run on the same clock and seeds keeps the earlier settings' results
    ft.main([*common, "--seeds", "2", "--only", "no_warm_start", "--out", str(two)])
    merged = json.loads(two.read_text())
    assert set(merged["settings"]) == {"params", "no_warm_start"} and merged["full_retrain"] == full
    assert merged["settings"]["params"]["mean_gain"] == seeds["mean_gain"]
