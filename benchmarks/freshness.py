"""Freshness benchmark: frozen base, daily LoRA and daily full retrain, each judged on the next cycle.

Over the replay cycles of the shipped data (params.yaml `clock`), at each cycle's as_of:
  (a) frozen: the FM trained once on history (every event before clock.start) by the FM recipe, never
      updated: the champion the pipeline trains at the initial cutoff;
  (b) lora:   the real daily path: `specrec.lora.finetune.run_cycle` (what the `daily_lora_finetune`
      flow's fine-tune task runs) against a throw-away MLflow store in which (a) is specrec-fm@champion:
      adapter on the cycle minus its gate holdout plus experience replay (params.yaml `lora`), warm start,
      gate, registration; what serves afterwards (`adapters.serving_model`: the champion adapter merged
      into the base, or the bare base) is judged. ADWIN and the retrain it may trigger are not part of
      this arm (that would mix arm (c) into it);
  (c) full:   the FM retrained from scratch by the same recipe (`specrec.lora.retrain.train_base`, what
      `retrain_base` runs; params.yaml `fm`: model, loss, pair loss, random windows, early stopping) on
      every event known at as_of.
The recipe's wall-clock budget (fm.train.time_budget_s) is replaced by the epoch count it gave the
pipeline's champion (data/metrics/train_fm.json, or --epochs), so every training gets the same
optimisation whatever the machine's load; early stopping (fm.train.patience) still applies.

All arms are scored on the same events: every event of the next cycle whose user has history
(next-event NDCG@10 / HR@10, seen items excluded, all items ranked). CPU seconds are process CPU seconds
(time.process_time, one torch thread) of the training only: the adapter's fine-tuning loop
(`train_cpu_s` of run_cycle) and the full retrain's optimisation with its per-epoch validation; data
preparation, gate scoring and MLflow are reported apart. gain_recovered = mean(lora - frozen) /
mean(full - frozen) over cycles' NDCG@10 (the issue's formula); compute_ratio = sum(lora CPU) / sum(full
CPU), the retrain's CPU measured in the same run (two epochs of its recipe beside the adapter; a cached
retrain's recorded seconds are from another day). As the per-cycle samples are small (a few hundred
events of 5-17 users), a paired bootstrap that resamples users within each cycle gives 95% intervals for
both gains, their difference and the ratio.

Trained FMs are cached under --cache (keyed by the recipe and the exact training events; the CPU
seconds recorded are those of the run that trained them), so the LoRA arm can be rerun cheaply.
Writes benchmarks/results/freshness.json (the issue's shape), freshness_details.json and freshness.png,
and logs them to the MLflow experiment `freshness-benchmark`.

    python benchmarks/freshness.py                        # ml-latest-small, all replay cycles
    python benchmarks/freshness.py --cycles 2             # the first 2 comparisons only
    python benchmarks/freshness.py --epochs 13 --seeds 3 --cached-only   # every arm over 3 FM seeds
    python benchmarks/freshness.py --sequence ../shared/data/amazon/Toys_and_Games.txt --cycles 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models import lora  # noqa: E402
from models.hstu import HSTU  # noqa: E402
from models.train import EpochRecord, load_checkpoint  # noqa: E402
from specrec.clock import Cycle, EventLog, ReplayClock  # noqa: E402
from specrec.config import ClockConfig, Config, load_config  # noqa: E402
from specrec.fm.replay_eval import cycle_targets  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.lora.evaluate import event_ranks, target_users  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "freshness.json"
CACHE = REPO / "logs" / "freshness_cache"
EXPERIMENT = "freshness-benchmark"
ARMS = ("frozen", "lora", "full")
# references, scored like the arms: the cycle's adapter whatever the gate said, and the frozen base's recipe
# with another seed (its "gain" over the frozen base is training noise alone)
REFERENCES = ("challenger", "reseeded")


# ---- data -----------------------------------------------------------------------------------------------


def sequence_project(
    cfg: Config, path: Path, step: str, n_cycles: int, tmp: Path, align: str = "end"
) -> Config:
    """Ingest, prepare and split a sequence-format file in a temp project.

    align `end` (every user's last event at one instant, `data.sequence.align`): each cycle is two steps,
    i.e. every user's next two events, and the clock covers each user's last 2 * n_cycles events, so every
    cycle holds about two events of every user long enough (the gate holds out the newer of the two).
    align `start`: the clock covers the last 10% of event times, which are the tails of the longest
    sequences only (a few users per cycle)."""
    from specrec.data import prepare, split
    from specrec.data.ingest import ingest

    paths = dataclasses.replace(
        cfg.paths, **{f.name: str(tmp / f.name) for f in dataclasses.fields(cfg.paths)}
    )
    data = dataclasses.replace(
        cfg.data,
        source="sequence",
        path=str(path.resolve()),
        sequence=dataclasses.replace(cfg.data.sequence, step=step, align=align),
    )
    seq_cfg = dataclasses.replace(cfg, paths=paths, data=data, root=tmp)
    ingest(seq_cfg)
    events = read_parquet(Path(paths.ingested) / "interactions.parquet", "ingested interactions")
    ts = events["timestamp"].sort_values().reset_index(drop=True)
    if align == "end":
        cadence = 2 * pd.Timedelta(step)
        start = ts.iloc[-1] + pd.Timedelta(step) - n_cycles * cadence
    else:
        # synthetic times are start + position * step, so cycles here are bands of sequence positions
        start = ts.iloc[int(len(ts) * 0.9)]
        cadence = ((ts.iloc[-1] - start) / n_cycles).ceil("s") + pd.Timedelta("1s")  # the last event inside
    clock = ClockConfig(
        start=start.isoformat(), cadence=f"{int(cadence / pd.Timedelta('1s'))}s", cycles=n_cycles
    )
    seq_cfg = dataclasses.replace(seq_cfg, clock=clock)
    prepare.run(seq_cfg)
    split.run(seq_cfg)
    return seq_cfg


def champion_epochs(cfg: Config) -> int:
    """The epochs the pipeline's champion trained (its wall-clock budget's worth), from train_fm.json."""
    path = cfg.path(cfg.paths.metrics) / "train_fm.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `dvc repro train_fm` first, or pass --epochs N.")
    return int(json.loads(path.read_text())["epochs"])


def recipe(cfg: Config, epochs: int) -> Config:
    """cfg with the FM recipe's wall-clock budget replaced by a fixed epoch budget (patience kept)."""
    train = dataclasses.replace(cfg.fm.train, max_epochs=epochs, time_budget_s=None)
    return dataclasses.replace(cfg, fm=dataclasses.replace(cfg.fm, train=train))


# ---- arm (a) and (c): the FM recipe, cached --------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """A trained FM, the folder holding its checkpoint and id map, and what its training cost."""

    model: HSTU
    folder: Path
    meta: dict[str, Any]

    @property
    def cpu_s(self) -> float:
        """Process CPU seconds of the training (as recorded by the run that trained it)."""
        return float(self.meta["cpu_s"])


# fm / fm.train fields added after the cache's first entries, with the value that reproduces the recipe
# before them: left out of the key at that value, so the cached FMs stay valid
LATER_FM_FIELDS = {"pair_gate": False}
LATER_TRAIN_FIELDS = {"pair_negatives_from": "batch", "pair_hard_pool": 200, "pair_cuts": 1}


def recipe_key_fields(cfg: Config) -> dict[str, Any]:
    """The FM recipe as the cache keys it."""
    fm = dataclasses.asdict(cfg.fm)
    fm = {k: v for k, v in fm.items() if not (k in LATER_FM_FIELDS and v == LATER_FM_FIELDS[k])}
    fm["train"] = {
        k: v for k, v in fm["train"].items() if not (k in LATER_TRAIN_FIELDS and v == LATER_TRAIN_FIELDS[k])
    }
    return fm


def cache_key(cfg: Config, known: pd.DataFrame) -> str:
    """Digest of the FM recipe and the exact training events."""
    h = hashlib.sha256(json.dumps(recipe_key_fields(cfg), sort_keys=True).encode())
    cols = known[["user_idx", "item_idx", "timestamp"]].sort_values(["user_idx", "timestamp", "item_idx"])
    h.update(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes())
    h.update(str(cfg.split.loo_min_events).encode())
    return h.hexdigest()[:16]


def train_fm_recipe(cfg: Config, known: pd.DataFrame, cache: Path) -> Trained:
    """The FM recipe on `known` (specrec.lora.retrain.train_base), or the cached result of the same."""
    from tqdm import tqdm

    from specrec.lora.retrain import train_base

    folder = cache / cache_key(cfg, known)
    meta_file = folder / "meta.json"
    if meta_file.exists():
        model = load_checkpoint(folder)
        assert isinstance(model, HSTU)
        return Trained(model, folder, json.loads(meta_file.read_text()) | {"cached": True})
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    curve: list[float] = []

    def on_epoch(rec: EpochRecord) -> None:
        curve.append(rec.metrics["ndcg@10"])
        # a retrain takes minutes: say where it is (tqdm.write keeps the cycles bar intact)
        tqdm.write(
            f"  FM on {len(known):,} events up to {known['timestamp'].max():%Y-%m-%d}: epoch {len(curve)}/"
            f"{cfg.fm.train.max_epochs}, validation NDCG@10 {curve[-1]:.4f}"
        )

    model, result, cpu_s = train_base(cfg, known, folder, progress=False, on_epoch=on_epoch)
    assert isinstance(model, HSTU), "the freshness benchmark needs fm.model: hstu"
    meta = {
        "cpu_s": cpu_s,
        "events": len(known),
        "last_event": known["timestamp"].max().isoformat(),
        "epochs": result.n_epochs,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "val_ndcg@10_by_epoch": curve,
    }
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return Trained(model.eval(), folder, meta | {"cached": False})


def retrain_cpu_now(cfg: Config, known: pd.DataFrame) -> dict[str, float]:
    """Process CPU seconds of two epochs of the FM recipe on `known`, trained now, and of the second alone:
    a cached retrain's CPU seconds were measured on another day, and this machine's CPU seconds drift by
    the hour. The first epoch carries the one-off costs and the second is the steady epoch, so an n-epoch
    retrain costs the two epochs plus n - 2 steady ones."""
    from specrec.lora.retrain import train_base

    marks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        _, _, two = train_base(
            recipe(cfg, 2),
            known,
            Path(tmp),
            progress=False,
            on_epoch=lambda _: marks.append(time.process_time()),
        )
    return {"two_epochs_cpu_s": two, "epoch_cpu_s": marks[1] - marks[0]}


# ---- arm (b): the daily LoRA flow's code path on a throw-away MLflow store --------------------------------


@contextlib.contextmanager
def mlflow_store(root: Path) -> Iterator[None]:
    """MLflow pointed at `root`/mlflow (tracking and registry) inside the block, restored afterwards."""
    import mlflow
    from specrec.tracking import local_uri, use_project_store

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    old = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    os.environ.update(dict.fromkeys(keys, local_uri(root)))
    use_project_store(root)
    try:
        yield
    finally:
        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: with nothing set before the block, `old`
        # is MLflow's default (sqlite:///mlflow.db in the cwd), so the variables are restored after it
        mlflow.set_tracking_uri(old[0])
        mlflow.set_registry_uri(old[1])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def lora_project(cfg: Config, root: Path) -> Config:
    """cfg with its own root (MLflow store) and absolute data paths, so run_cycle reads the same events."""
    absolute = {f.name: str(cfg.path(getattr(cfg.paths, f.name))) for f in dataclasses.fields(cfg.paths)}
    paths = dataclasses.replace(cfg.paths, **absolute)
    return dataclasses.replace(cfg, paths=paths, root=root)


def register_champion(root: Path, base: Trained, cutoff: pd.Timestamp) -> str:
    """Register the frozen base as specrec-fm@champion (tagged with its training cutoff); its version."""
    import mlflow
    from specrec.fm.train import EXPERIMENT as FM_EXPERIMENT
    from specrec.fm.train import REGISTERED_MODEL, _log_model
    from specrec.lora.adapters import CUTOFF
    from specrec.registry import CHAMPION
    from specrec.tracking import experiment_id

    name = cutoff.date().isoformat()
    with mlflow.start_run(experiment_id=experiment_id(root, FM_EXPERIMENT), run_name=name):
        mlflow.set_tags({"as_of": cutoff.isoformat(), "stage": "freshness_benchmark"})
        version = _log_model(base.folder)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, version, CUTOFF, cutoff.isoformat())
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    return version


def lora_step(cfg: Config, cycle: Cycle) -> tuple[HSTU, HSTU | None, dict[str, Any]]:
    """One daily cycle through run_cycle; the model that serves after it, the challenger, the figures."""
    import mlflow
    from specrec.lora import adapters
    from specrec.lora.finetune import run_cycle

    cpu0 = time.process_time()
    out = run_cycle(cfg, cycle.as_of, flow_run_id="freshness-benchmark", progress=False)
    cycle_cpu = time.process_time() - cpu0
    client = mlflow.MlflowClient()
    served, parts = adapters.serving_model(client)
    challenger = None
    if out.adapter_version is not None:
        challenger = lora.merge(adapters.load_adapter(client, out.adapter_version).model)
    train_cpu = out.metrics.get("train_cpu_s", math.nan)
    return (
        served,
        challenger,
        {
            "lora_cpu_s": 0.0 if math.isnan(train_cpu) else float(train_cpu),
            "lora_cycle_cpu_s": cycle_cpu,
            "lora_gate": out.status,
            "lora_gate_reason": out.reason,
            "lora_serving_adapter": parts["adapter"],
            "lora_train_targets": out.metrics.get("train_targets", math.nan),
            "lora_new_item_rows": out.metrics.get("new_item_rows", math.nan),
            "lora_item_rows": out.metrics.get("adapter_item_rows", math.nan),
            "lora_epochs_trained": out.metrics.get("epochs_trained", math.nan),
            "lora_best_epoch": out.metrics.get("best_epoch", math.nan),
            "lora_val_ndcg@10": out.metrics.get("val_ndcg_at_10", math.nan),
        },
    )


# ---- evaluation ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The scored events of one cycle: their users, and for each arm each event's rank."""

    users: np.ndarray  # (N,)
    ranks: dict[str, np.ndarray]  # arm -> (N,) 0-based ranks

    def ndcg(self, arm: str) -> np.ndarray:
        """Per-event NDCG@10."""
        r = self.ranks[arm].astype(np.float64)
        return np.where(r < 10, 1.0 / np.log2(r + 2), 0.0)

    def hr(self, arm: str) -> np.ndarray:
        """Per-event hit@10."""
        return (self.ranks[arm] < 10).astype(np.float64)


def ranks(model: HSTU, events: pd.DataFrame, window: Cycle) -> np.ndarray:
    """0-based ranks of the window's events (next-event protocol, all items, seen items excluded)."""
    return event_ranks(model, events, window, model.config.max_len).numpy()


def target_mix(events: pd.DataFrame, window: Cycle, cutoff: pd.Timestamp) -> dict[str, float]:
    """Share of the window's scored targets on items first seen after the base's cutoff: before the
    window (learnable by a daily update) or inside it (learnable by nobody)."""
    _, targets, _ = cycle_targets(EventLog(events), window)
    first = events.groupby("item_idx")["timestamp"].min().reindex(targets).to_numpy()
    n = max(len(targets), 1)
    return {
        "targets_new_since_cutoff": float(((first >= cutoff) & (first < window.start)).sum() / n),
        "targets_new_in_window": float((first >= window.start).sum() / n),
    }


def _ci(x: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles."""
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def paired_bootstrap(sets: list[EvalSet], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """95% intervals of mean-over-cycles NDCG@10 gains over the frozen base, resampling users (with all
    their events, the same users for every arm) within each cycle."""
    rng = np.random.default_rng(seed)
    arms = list(sets[0].ranks)
    means = {arm: np.zeros((n_boot, len(sets))) for arm in arms}
    for c, s in enumerate(sets):
        users, inverse = np.unique(s.users, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(users)).astype(np.float64)
        w = rng.multinomial(len(users), np.full(len(users), 1 / len(users)), size=n_boot)  # (B, U)
        den = np.maximum(w @ counts, 1e-12)  # (B,)
        for arm in arms:
            means[arm][:, c] = (w @ np.bincount(inverse, weights=s.ndcg(arm), minlength=len(users))) / den
    gains = {a: (means[a] - means["frozen"]).mean(axis=1) for a in arms if a != "frozen"}  # (B,) each
    ratio = gains["lora"] / np.where(gains["full"] == 0, np.nan, gains["full"])
    return {
        "resamples": n_boot,
        "unit": "user within cycle",
        **{f"{a}_gain_ci95": _ci(g) for a, g in gains.items()},
        **{f"p_{a}_gain_positive": float((g > 0).mean()) for a, g in gains.items()},
        "lora_minus_full_ci95": _ci(gains["lora"] - gains["full"]),
        # a ratio interval only means something when the denominator stays away from 0
        "gain_recovered_ci95": _ci(ratio) if (gains["full"] > 0).all() else None,
    }


# ---- the run ---------------------------------------------------------------------------------------------


def seeded(cfg: Config, offset: int) -> Config:
    """cfg with the FM recipe's seed and the adapter's seed moved by `offset` (offset 0: cfg itself)."""
    train = dataclasses.replace(cfg.fm.train, seed=cfg.fm.train.seed + offset)
    return dataclasses.replace(
        cfg,
        fm=dataclasses.replace(cfg.fm, train=train),
        lora=dataclasses.replace(cfg.lora, seed=cfg.lora.seed + offset),
    )


def mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cycle's rows of several seeds as one: numbers averaged, other values kept if equal, else listed."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if all(v == values[0] for v in values):
            out[key] = values[0]
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = float(np.mean(values))
        else:
            out[key] = values
    return out


def run(
    cfg: Config,
    n_compare: int,
    cache: Path,
    n_boot: int,
    progress: bool = True,
    cached_only: bool = False,
    seeds: int = 1,
) -> dict[str, Any]:
    """Frozen base once, then per cycle the daily LoRA step and the full retrain; all scored on the next.

    seeds: repeat the comparison with the FM recipe's (and the adapter's) seed moved by 0 .. seeds-1: every
    arm's training noise averages out; per cycle the scored events of every seed form one set, so the
    bootstrap resamples a user with all their events across seeds. The `reseeded` reference of seed k is
    the frozen base of seed k+1.
    cached_only: compare only the cycles whose full retrains (of every seed) are already in the cache (the
    LoRA chain still runs through every cycle); the others are listed under `not_compared`.
    """
    from tqdm import tqdm

    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    clock = ReplayClock.from_config(cfg.clock)
    history = events[events["timestamp"] < clock.start]
    frozen = [train_fm_recipe(seeded(cfg, k), history, cache) for k in range(seeds + 1)]
    cycles = clock.cycles()[: n_compare + 1]
    pairs = list(zip(cycles[:-1], cycles[1:], strict=True))

    def cached(cycle: Cycle) -> bool:
        known = events[events["timestamp"] < cycle.as_of]
        return all((cache / cache_key(seeded(cfg, k), known) / "meta.json").exists() for k in range(seeds))

    compared = {c.name: not cached_only or cached(c) for c, _ in pairs}
    runs: list[dict[str, Any]] = []
    by_cycle: dict[str, list[EvalSet]] = {}
    not_compared: list[dict[str, Any]] = []
    calibration: dict[str, dict[str, float]] = {}  # per cycle: the retrain's epoch costs measured now
    bar = tqdm(total=seeds * len(pairs), desc="cycles", disable=not progress)
    for k in range(seeds):
        scfg = seeded(cfg, k)
        with tempfile.TemporaryDirectory() as tmp, mlflow_store(Path(tmp)):
            lcfg = lora_project(scfg, Path(tmp))
            register_champion(Path(tmp), frozen[k], clock.start)
            for cycle, nxt in pairs:
                known = events[events["timestamp"] < cycle.as_of]
                served, challenger, lora_row = lora_step(lcfg, cycle)
                if not compared[cycle.name]:
                    reason = "no cached full retrain"
                    not_compared.append(
                        {"as_of": cycle.name, "fm_seed_offset": k, "reason": reason} | lora_row
                    )
                    print(json.dumps(not_compared[-1]), flush=True)
                    bar.update()
                    continue
                full = train_fm_recipe(scfg, known, cache)
                # the retrain's cost measured beside the adapter's (once per cycle: the same events)
                if cycle.name not in calibration:
                    calibration[cycle.name] = retrain_cpu_now(scfg, known)
                cal = calibration[cycle.name]
                full_cpu = cal["two_epochs_cpu_s"] + (full.meta["epochs"] - 2) * cal["epoch_cpu_s"]
                models = {"frozen": frozen[k].model, "lora": served, "full": full.model}
                models |= {"challenger": challenger or frozen[k].model, "reseeded": frozen[k + 1].model}
                ranks_ = {arm: ranks(m, events, nxt) for arm, m in models.items()}
                ev = EvalSet(target_users(events, nxt), ranks_)
                by_cycle.setdefault(cycle.name, []).append(ev)
                runs.append(
                    {
                        "as_of": cycle.name,
                        "evaluated_on": nxt.name,
                        "fm_seed_offset": k,
                        **{
                            f"{a}_{m}@10": float(getattr(ev, m)(a).mean())
                            for a in ARMS
                            for m in ("ndcg", "hr")
                        },
                        **{f"{a}_ndcg@10": float(ev.ndcg(a).mean()) for a in REFERENCES},
                        "full_cpu_s": full_cpu,
                        "full_cpu_s_recorded": full.cpu_s,
                        "full_two_epochs_cpu_s": cal["two_epochs_cpu_s"],
                        "full_epoch_cpu_s": cal["epoch_cpu_s"],
                        **lora_row,
                        "events_scored": len(ev.users),
                        "users_scored": len(np.unique(ev.users)),
                        **target_mix(events, nxt, clock.start),
                        "full_epochs": full.meta["epochs"],
                        "full_best_epoch": full.meta["best_epoch"],
                        "full_cached": full.meta["cached"],
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
                bar.update()
    bar.close()
    sets = [merge_sets(group) for group in by_cycle.values()]
    order = list(by_cycle)
    rows = []
    for name in order:
        row = mean_rows([r for r in runs if r["as_of"] == name])
        rows.append({k: v for k, v in row.items() if k != "fm_seed_offset"} | {"seeds": seeds})
    keys = ("cpu_s", "epochs", "best_epoch", "stopped", "val_ndcg@10_by_epoch")
    bases = {
        f"{n}_base": {k: t.meta[k] for k in keys} for n, t in (("frozen", frozen[0]), ("reseeded", frozen[1]))
    }
    extra = {"seed_runs": runs, "fm_seeds": [seeded(cfg, k).fm.train.seed for k in range(seeds)]}
    summary = summarise(runs, sets, n_boot)
    summary["events_scored"] = int(sum(r["events_scored"] for r in rows))  # each seed scores the same events
    return {"cycles": rows, "not_compared": not_compared} | bases | extra | summary


def merge_sets(group: list[EvalSet]) -> EvalSet:
    """One cycle's scored events of every seed as one set (a user's events of all seeds together)."""
    return EvalSet(
        np.concatenate([s.users for s in group]),
        {arm: np.concatenate([s.ranks[arm] for s in group]) for arm in group[0].ranks},
    )


def summarise(rows: list[dict[str, Any]], sets: list[EvalSet], n_boot: int) -> dict[str, Any]:
    """gain_recovered and compute_ratio as the issue defines them, the event-pooled gains, the bootstrap."""
    mean = {a: float(np.mean([r[f"{a}_ndcg@10"] for r in rows])) for a in ARMS + REFERENCES}
    full_gain, lora_gain = mean["full"] - mean["frozen"], mean["lora"] - mean["frozen"]
    lora_cpu, full_cpu = sum(r["lora_cpu_s"] for r in rows), sum(r["full_cpu_s"] for r in rows)
    recorded = sum(r["full_cpu_s_recorded"] for r in rows)
    pooled = {a: float(np.concatenate([s.ndcg(a) for s in sets]).mean()) for a in ARMS + REFERENCES}
    pooled_full = pooled["full"] - pooled["frozen"]
    return {
        "gain_recovered": lora_gain / full_gain if full_gain != 0 else math.nan,
        "compute_ratio": lora_cpu / full_cpu if full_cpu > 0 else math.nan,
        # against the retrains' CPU seconds as recorded when they were trained (another day, if cached)
        "compute_ratio_recorded": lora_cpu / recorded if recorded > 0 else math.nan,
        "mean_ndcg@10": mean,
        "mean_hr@10": {a: float(np.mean([r[f"{a}_hr@10"] for r in rows])) for a in ARMS},
        "gain_over_frozen": {a: mean[a] - mean["frozen"] for a in ARMS[1:] + REFERENCES},
        "pooled_ndcg@10": pooled,
        "pooled_gain_recovered": (pooled["lora"] - pooled["frozen"]) / pooled_full
        if pooled_full
        else math.nan,
        "events_scored": int(sum(len(s.users) for s in sets)),
        "bootstrap": paired_bootstrap(sets, n_boot),
        "lora_promotions": sum(r["lora_gate"] == "promoted" for r in rows),
        "targets": {"gain_recovered": ">= 0.8", "compute_ratio": "<= 0.1"},
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """NDCG@10 per cycle, the gains over the frozen base (with the bootstrap interval) and CPU seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cycles"]
    x = np.arange(len(rows))
    labels = [r["evaluated_on"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colour = {"frozen": "grey", "lora": "C0", "full": "C1"}
    for arm in ARMS:
        axes[0].plot(x, [r[f"{arm}_ndcg@10"] for r in rows], marker="o", label=arm, color=colour[arm])
    axes[0].set_title("next-cycle NDCG@10")
    axes[0].legend()
    for off, arm in ((-0.15, "lora"), (0.15, "full")):
        gains = [r[f"{arm}_ndcg@10"] - r["frozen_ndcg@10"] for r in rows]
        axes[1].bar(x + off, gains, 0.3, label=arm, color=colour[arm])
    boot = result["bootstrap"]
    for off, arm in ((-0.15, "lora"), (0.15, "full")):
        gain, (lo, hi) = result["gain_over_frozen"][arm], boot[f"{arm}_gain_ci95"]
        yerr = [[gain - lo], [hi - gain]]
        axes[1].errorbar(len(rows) + off, gain, yerr=yerr, fmt="s", capsize=4, color=colour[arm])
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_title("gain over frozen (right: mean, 95% CI)")
    axes[1].legend()
    axes[2].bar(x - 0.2, [r["lora_cpu_s"] for r in rows], 0.4, label="lora", color="C0")
    axes[2].bar(x + 0.2, [r["full_cpu_s"] for r in rows], 0.4, label="full retrain", color="C1")
    axes[2].set_yscale("log")
    axes[2].set_title("training CPU seconds per cycle")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(np.arange(len(labels) + (ax is axes[1])), labels + (["mean"] if ax is axes[1] else []))
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(
        f"gain recovered {result['gain_recovered']:.2f}, compute ratio {result['compute_ratio']:.3f}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_mlflow(cfg: Config, result: dict[str, Any], png: Path, args: argparse.Namespace) -> str:
    """One run in `freshness-benchmark`: per-cycle metrics by step, the summary, the plot and the JSON."""
    import mlflow
    from specrec.registry import metric_key
    from specrec.tracking import experiment_id, use_project_store

    use_project_store(cfg.root)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=args.run_name) as run:
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("out", "cache")})
        for step, row in enumerate(result["cycles"], start=1):
            mlflow.log_metrics(
                {metric_key(k): float(v) for k, v in row.items() if isinstance(v, int | float)}, step=step
            )
        mlflow.log_metrics(
            {"gain_recovered": result["gain_recovered"], "compute_ratio": result["compute_ratio"]}
        )
        mlflow.log_artifact(str(png))
        mlflow.log_dict(result, "freshness.json")
    return run.info.run_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params.yaml (fm, lora, clock)")
    p.add_argument(
        "--cycles", type=int, default=0, help="comparisons to run (0 = every cycle with a next one)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="epoch budget of every FM training (0 = the champion's, from data/metrics/train_fm.json)",
    )
    p.add_argument(
        "--sequence", type=Path, default=None, help="a sequence-format file instead of params' data"
    )
    p.add_argument("--sequence-step", default="1h", help="time between a user's events in --sequence")
    p.add_argument(
        "--sequence-align",
        choices=["end", "start"],
        default="end",
        help="--sequence times: end = every user's last event at one instant (cycles are every user's "
        "newest events) | start = every user starts together (cycles are the longest sequences' tails)",
    )
    p.add_argument(
        "--lora",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override params.yaml's lora settings for the LoRA arm, e.g. supervise=window lr=0.001",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat every arm with the FM recipe's and the adapter's seed moved by 0..N-1 and average "
        "(the training noise of one seed is as large as the gains on ml-latest-small)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--cache", type=Path, default=CACHE, help="folder of trained FMs (reused by key)")
    p.add_argument(
        "--train-only",
        type=int,
        nargs="+",
        default=None,
        help="only train (into --cache) the full retrains at these cycles (1-based), then stop: lets "
        "several processes fill the cache in parallel",
    )
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="compare only cycles whose full retrain is already cached (filled by --train-only runs)",
    )
    p.add_argument("--run-name", default="freshness", help="MLflow run name")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return p.parse_args(argv)


def fill_cache(cfg: Config, cycles: list[int], cache: Path, seeds: int = 1) -> None:
    """Train the full retrains at the given cycles (1-based) of every seed into the cache."""
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    clock = ReplayClock.from_config(cfg.clock).cycles()
    for k in cycles:
        if not 1 <= k <= len(clock):
            raise SystemExit(f"--train-only {k}: the clock has cycles 1..{len(clock)}")
        for offset in range(seeds):
            known = events[events["timestamp"] < clock[k - 1].as_of]
            trained = train_fm_recipe(seeded(cfg, offset), known, cache)
            print(
                f"cycle {k} ({clock[k - 1].name}), seed offset {offset}: {trained.folder} "
                f"{trained.cpu_s:.0f} CPU s",
                flush=True,
            )


def lora_overrides(cfg: Config, pairs: list[str]) -> Config:
    """cfg with `--lora KEY=VALUE` settings (YAML values) in its lora section, validated as params.yaml's."""
    import yaml

    from specrec.errors import SpecrecError

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(cfg.lora)} or key == "drift":
            raise SystemExit(f"error: --lora {pair!r}: use KEY=VALUE with KEY a field of params.yaml's lora")
        values[key] = yaml.safe_load(value)
    try:
        return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, **values))
    except SpecrecError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the figures, write JSON and PNG, log to MLflow."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = lora_overrides(load_config(args.params), args.lora)
    epochs = args.epochs or champion_epochs(cfg)
    if args.seeds < 1:
        raise SystemExit(f"error: --seeds {args.seeds}: give 1 or more seeds to average over")
    if args.train_only:
        fill_cache(recipe(cfg, epochs), args.train_only, args.cache, args.seeds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        n_cycles = cfg.clock.cycles
        if args.sequence is not None:
            if args.sequence_align == "end":  # each cycle two of every user's last events: keep it short
                n_cycles = args.cycles + 1 if args.cycles else 3
            else:
                n_cycles = max(args.cycles + 1, 6) if args.cycles else 6
            cfg = sequence_project(
                cfg, args.sequence, args.sequence_step, n_cycles, Path(tmp), args.sequence_align
            )
        n_compare = min(args.cycles or n_cycles - 1, n_cycles - 1)
        wall0 = time.perf_counter()
        result = run(
            recipe(cfg, epochs),
            n_compare,
            args.cache,
            args.bootstrap,
            cached_only=args.cached_only,
            seeds=args.seeds,
        )
    result["wall_seconds"] = time.perf_counter() - wall0
    result["setup"] = {
        "fm": dataclasses.asdict(recipe(cfg, epochs).fm),
        "epoch_budget": epochs,
        "lora": dataclasses.asdict(cfg.lora),
        "data": f"{args.sequence.name} (align {args.sequence_align}, step {args.sequence_step})"
        if args.sequence
        else cfg.data.path,
    }
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} torch thread(s)"
    )
    result["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    write(result, args)


def write(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The issue-shaped JSON, the details JSON, the PNG, the MLflow run; a one-line summary."""
    png = args.out.with_suffix(".png")
    plot(result, png)
    if not args.no_mlflow:
        result["mlflow_run_id"] = log_mlflow(load_config(args.params), result, png, args)
    details = args.out.with_name(args.out.stem + "_details.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(issue_shape(result), indent=2) + "\n")
    details.write_text(json.dumps(result, indent=2) + "\n")
    boot = result["bootstrap"]
    print(
        f"gain_recovered {result['gain_recovered']:.3f} (target >= 0.8), compute_ratio "
        f"{result['compute_ratio']:.4f} (target <= 0.1); gains over frozen: lora "
        f"{result['gain_over_frozen']['lora']:+.5f} {boot['lora_gain_ci95']}, full "
        f"{result['gain_over_frozen']['full']:+.5f} {boot['full_gain_ci95']} (95% CI); "
        f"{result['events_scored']} events; {result['wall_seconds']:.0f} s; wrote {args.out}, {png}"
    )


ISSUE_CYCLE_KEYS = ("as_of", "frozen_ndcg@10", "lora_ndcg@10", "full_ndcg@10", "lora_cpu_s", "full_cpu_s")


def issue_shape(result: dict[str, Any]) -> dict[str, Any]:
    """The results file exactly as the issue gives it; everything else goes to the details file."""
    return {
        "cycles": [{k: row[k] for k in ISSUE_CYCLE_KEYS} for row in result["cycles"]],
        "gain_recovered": result["gain_recovered"],
        "compute_ratio": result["compute_ratio"],
        "command": result["command"],
    }


if __name__ == "__main__":
    main()
