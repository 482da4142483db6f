"""The MLflow compare view and `specrec report`, on a copy of the tiny project with its real MLflow store.

Real per-cycle flows run under Prefect's test harness (daily LoRA for three cycles, the third skipped; the
nearline flows for two cycles; the speculator's retrain and three precompute windows); every per-cycle
experiment must then line up: one run per as_of (per view / kind where an experiment holds several) and
the same metric keys in every run. The report is built from that store, in-process and by the CLI.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import mlflow
from specrec.clock import ReplayClock, to_utc
from specrec.config import Config, load_config
from specrec.report.build import build_report
from specrec.tracking import experiment_id, use_project_store
from tests.conftest import copy_project, prefect_harness
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_harness():
        yield


def _use(cfg: Config) -> Config:
    """Point MLflow at this project's store (an inherited MLFLOW_TRACKING_URI would win otherwise)."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)
    use_project_store(cfg)
    return cfg


def _params(folder: Path, **lora: object) -> Path:
    """Small LoRA settings (plus overrides) in the copy's params.yaml; returns its path."""
    path = folder / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["lora"] |= {"epochs": 2, "min_events": 20, "batch_size": 16, "r": 4, "alpha": 8.0} | lora
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _windows(cfg: Config) -> list[str]:
    """Three precompute window starts in cycle 2: after a burst of events, one ttl later, and a quiet one."""
    clock, spec = ReplayClock.from_config(cfg.clock), cfg.speculation
    cycle = clock.cycle(2)
    events = pd.read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet")
    t = events.loc[(events["timestamp"] >= cycle.start) & (events["timestamp"] < cycle.as_of), "timestamp"]
    busy = t.dt.floor(spec.window).value_counts().idxmax() + pd.Timedelta(spec.window)
    later = busy + pd.Timedelta(spec.ttl) + pd.Timedelta(spec.window)
    return [w.isoformat() for w in (busy, later, cycle.start + pd.Timedelta("1D"))]


@pytest.fixture(scope="module")
def project(tiny_project: TinyProject, harness: None, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A copy of the tiny project after the per-cycle flows of cycles 1-3 ran for real."""
    from flows.daily_lora_finetune import daily_lora_finetune
    from flows.materialize_item_embeddings import materialize_item_embeddings
    from flows.retrain_speculator import retrain_speculator
    from flows.speculative_precompute import speculative_precompute
    from flows.update_item_stats import update_item_stats
    from flows.update_user_state import update_user_state
    from specrec.nearline.store import apply

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("report") / "project"
    copy_project(tiny_project.cfg, folder, ("feast", "kv_cache"))
    params = str(_params(folder))
    cfg = _use(load_config(Path(params)))
    apply(cfg)
    clock = ReplayClock.from_config(cfg.clock)
    for k in (1, 2):
        as_of = clock.cycle(k).as_of.isoformat()
        for flow in (daily_lora_finetune, materialize_item_embeddings, update_item_stats, update_user_state):
            state = flow(as_of=as_of, params=params, return_state=True)
            assert state.is_completed(), (flow.name, as_of, state)
    skipped = str(_params(folder, min_events=10**6))  # cycle 3 has too few events: a skipped run
    out = daily_lora_finetune(as_of=clock.cycle(3).as_of.isoformat(), params=skipped)
    assert out["cycle"]["status"] == "skipped"
    _params(folder)
    state = retrain_speculator(as_of=clock.cycle(2).as_of.isoformat(), params=params, return_state=True)
    assert state.is_completed(), state
    for window in _windows(cfg):
        state = speculative_precompute(as_of=window, params=params, return_state=True)
        assert state.is_completed(), state
    return cfg


@pytest.fixture
def proj(project: Config) -> Config:
    return _use(project)


def _runs(cfg: Config, experiment: str, where: str = "") -> list:  # type: ignore[type-arg]
    return mlflow.search_runs([experiment_id(cfg.root, experiment)], where, output_format="list")


def _lined_up(runs: list, by: tuple[str, ...] = ()) -> None:  # type: ignore[type-arg]
    """One run per as_of (and `by` tags), named by its as_of date, all with the same metric keys."""
    assert runs
    groups = [(to_utc(r.data.tags["as_of"]), *(r.data.tags[t] for t in by)) for r in runs]
    assert len(set(groups)) == len(groups), sorted(groups)
    for r in runs:
        assert r.info.run_name.startswith(str(to_utc(r.data.tags["as_of"]).date())), r.info.run_name
    keys = {frozenset(r.data.metrics) for r in runs}
    assert len(keys) == 1, sorted(frozenset.union(*keys) - frozenset.intersection(*keys))


def test_per_cycle_experiments_line_up_in_the_compare_view(proj: Config) -> None:
    clock = ReplayClock.from_config(proj.clock)
    lora = _runs(proj, "lora-finetune")
    assert {r.info.run_name for r in lora} == {clock.cycle(k).name for k in (1, 2, 3)}
    assert sorted(r.data.tags["status"] for r in lora).count("skipped") == 1
    _lined_up(lora)
    views = {r.data.tags["view"] for r in _runs(proj, "materialize") if "view" in r.data.tags}  # not bundles
    assert views == {"item_repr", "item_stats", "user_state"}
    for view in views:
        _lined_up(_runs(proj, "materialize", f"tags.view = '{view}'"), by=("bundle_id",))
    _lined_up(_runs(proj, "speculation", "tags.kind = 'retrain'"))
    windows = _runs(proj, "speculation", "tags.kind = 'precompute'")
    assert len(windows) == 3 and any(r.data.metrics["expired_rows_pairs"] > 0 for r in windows)
    _lined_up(windows)


def _pngs(html: Path) -> list[Path]:
    """The figures the page references, as paths beside it; each must be a real PNG."""
    names = re.findall(r'<img src="([^"]+)"', html.read_text())
    paths = [html.parent / n for n in names]
    for p in paths:
        head = p.read_bytes()[:24]
        assert head[:8] == PNG and head[12:16] == b"IHDR", p
        width, height = struct.unpack(">II", head[16:24])
        assert width > 300 and height > 200, (p, width, height)
    return paths


def test_report_draws_every_experiment_and_is_logged(proj: Config, tmp_path: Path) -> None:
    report = build_report(proj, tmp_path / "out" / "report.html", "http://ui.test:5000")
    page = report.html.read_text()
    figures = _pngs(report.html)
    assert sorted(figures) == sorted(report.figures)
    drawn = ("quality", "speculation", "materialize", "fm")
    assert {p.name for p in figures} == {f"report_{k}.png" for k in drawn}
    # runs line up by cycle in the tables, each linked to its run; experiments open in the ML view
    lora_id = experiment_id(proj.root, "lora-finetune")
    assert f"http://ui.test:5000/#/experiments/{lora_id}/runs?workflowType=machine_learning" in page
    for r in _runs(proj, "lora-finetune"):
        assert f'/#/experiments/{lora_id}/runs/{r.info.run_id}">{r.info.run_name}</a>' in page
    assert report.runs["quality"] == 3
    assert report.runs["materialize"] == len([r for r in _runs(proj, "materialize") if "view" in r.data.tags])
    # sections without runs say what to run instead of failing; nothing is out of line
    assert "no replay runs yet: run `specrec replay --cycles 3`" in page
    assert "no codebook-refresh runs yet" in page and "no cycle runs yet" in page
    assert "compare view:" not in page
    run = mlflow.get_run(report.run_id)
    assert run.info.experiment_id == experiment_id(proj.root, "report")
    assert run.data.metrics["runs_quality"] == 3
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(report.run_id, "report")}
    assert logged == {f"report/{p.name}" for p in [report.html, *figures]}


def _replay_run(cfg: Config, k: int, p50: float, drop: str = "") -> None:
    """One run in the replay contract (`specrec replay` logs one per cycle with these keys)."""
    cycle = ReplayClock.from_config(cfg.clock).cycle(k)
    metrics = (
        {"requests": 100.0, "errors": 0.0, "degraded": float(k), "hr_at_10": 0.1, "ndcg_at_10": 0.05}
        | {"spec_hits": 10.0, "spec_coverage": 0.4, "cycle_seconds": 30.0}
        | {"latency_p50_ms": p50, "latency_p95_ms": 2 * p50, "latency_p99_ms": 3 * p50}
    )
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, "replay"), run_name=cycle.name):
        mlflow.set_tag("as_of", cycle.as_of.isoformat())
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != drop})


def test_replay_runs_are_drawn_and_runs_out_of_line_are_flagged(proj: Config, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    copy_project(proj, copy, ("feast", "kv_cache", "data"))
    cfg = _use(load_config(copy / "params.yaml"))
    _replay_run(cfg, 1, 4.0)
    _replay_run(cfg, 2, 6.0)
    cycle = ReplayClock.from_config(cfg.clock).cycle(1)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, "cycle"), run_name=cycle.name):
        mlflow.set_tags({"as_of": cycle.as_of.isoformat(), "step.lora": "promoted adapter v1 (no champion)"})
        mlflow.log_metrics({"events": 881.0, "seconds_ingest": 0.2, "seconds_lora": 11.3})
    report = build_report(cfg, tmp_path / "report.html")
    assert {"report_latency.png", "report_cycle.png"} <= {p.name for p in _pngs(report.html)}
    page = report.html.read_text()
    assert "promoted adapter v1 (no champion)" in page  # what each step of run_cycle did
    assert "no replay runs yet" not in page and "<td>12</td>" in page  # p95 of cycle 2 in the table
    assert "compare view:" not in page
    # a second run of cycle 2 that lacks a key breaks the compare view: the page says so
    _replay_run(cfg, 2, 5.0, drop="spec_hits")
    page = build_report(cfg, tmp_path / "again.html").html.read_text()
    cycle = ReplayClock.from_config(cfg.clock).cycle(2).name
    assert f"compare view: replay: 2 runs for cycle {cycle}" in page
    assert "compare view: replay: metric keys differ between runs: spec_hits" in page


def test_cli_writes_the_report_and_prints_its_path(proj: Config, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    cli = str(Path(sys.executable).parent / "specrec")
    out = tmp_path / "cli" / "page.html"
    args = [cli, "report", "--params", str(proj.root / "params.yaml")]
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert {p.name for p in _pngs(out)} >= {"page_quality.png", "page_materialize.png"}
    bad = subprocess.run([*args, "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and str(tmp_path) in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
