"""Where the freshness gain comes from, and whether any daily adapter recipe finds it (diagnostics for
benchmarks/freshness.py; nothing here is a production path).

Two questions, each on the slice it may be asked of:

* `--split` (the benchmark's cycles): the daily full retrain's NDCG@10 gain over the frozen base, split by
  target: items first seen after the base's cutoff (which only a daily update can learn) and older items.
* `--variants` (the validation cycles of benchmarks/freshness_tune.py, before the benchmark's clock):
  adapters trained directly (no gate, no warm start, each cycle from the frozen base) with separate
  learning rates for LoRA and for the new items' embedding rows, on the cycle's new events, or on every
  event since the base's cutoff, with replay; plus the daily full retrain on the same slice.

    python benchmarks/freshness_probe.py --split
    python benchmarks/freshness_probe.py --variants "rows=0/0.003/5/0.5" "lora=0.003/0.003/5/0.5" --full

A variant is NAME=LORA_LR/ROWS_LR/EPOCHS/REPLAY: REPLAY in [0, 1) is the replay share of the cycle's
targets; REPLAY > 1 adds that many replay targets (an epoch's worth is about the base's events); a
negative REPLAY trains on every event since the base's cutoff with replay share -REPLAY. LORA_LR 0 trains
only the new items' rows. A NAME starting with "whole" fine-tunes every weight of the base at LORA_LR
instead (no adapter: a reference for what the low-rank restriction costs).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import freshness as fb  # noqa: E402
import freshness_tune as ft  # noqa: E402

from models import lora  # noqa: E402
from models.hstu import HSTU  # noqa: E402
from models.losses import next_item_loss  # noqa: E402
from specrec.clock import Cycle, EventLog, ReplayClock  # noqa: E402
from specrec.config import Config, load_config  # noqa: E402
from specrec.fm.replay_eval import cycle_targets  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.lora.data import cycle_data, new_event_windows, replay_windows  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "freshness_probe.json"


def ndcg(model: HSTU, events: pd.DataFrame, window: Cycle) -> np.ndarray:
    """Per-event NDCG@10 of the window's events (the benchmark's protocol)."""
    r = fb.ranks(model, events, window).astype(np.float64)
    return np.where(r < 10, 1.0 / np.log2(r + 2), 0.0)


def split(cfg: Config, events: pd.DataFrame) -> dict[str, Any]:
    """Frozen vs daily full retrain per benchmark cycle, by target: new since the cutoff, or older."""
    clock = ReplayClock.from_config(cfg.clock)
    frozen = fb.train_fm_recipe(cfg, events[events["timestamp"] < clock.start], fb.CACHE)
    first = events.groupby("item_idx")["timestamp"].min()
    rows, sums = [], {k: np.zeros(3) for k in ("new", "old")}
    cycles = clock.cycles()
    for cyc, nxt in zip(cycles[:-1], cycles[1:], strict=True):
        full = fb.train_fm_recipe(cfg, events[events["timestamp"] < cyc.as_of], fb.CACHE)
        _, targets, _ = cycle_targets(EventLog(events), nxt)
        new = first.reindex(targets).to_numpy() >= clock.start
        a, b = ndcg(frozen.model, events, nxt), ndcg(full.model, events, nxt)
        row: dict[str, Any] = {"as_of": cyc.name, "events": len(targets), "new_share": float(new.mean())}
        for k, mask in (("new", new), ("old", ~new)):
            sums[k] += (mask.sum(), a[mask].sum(), b[mask].sum())
            row[f"frozen_{k}"] = float(a[mask].mean()) if mask.any() else None
            row[f"full_{k}"] = float(b[mask].mean()) if mask.any() else None
        rows.append(row)
        print(row, flush=True)
    n = sum(s[0] for s in sums.values())
    return {
        "cycles": rows,
        **{
            f"{k}_targets": {
                "events": int(s[0]),
                "frozen_ndcg@10": s[1] / max(s[0], 1),
                "full_ndcg@10": s[2] / max(s[0], 1),
                "share_of_pooled_gain": (s[2] - s[1]) / n,
            }
            for k, s in sums.items()
        },
    }


def train(
    base: HSTU,
    windows: list[lora.Window],
    rows: list[int],
    lora_lr: float,
    rows_lr: float,
    epochs: int,
    whole: bool = False,
) -> HSTU:
    """An adapter on `base` (params.yaml's LoRA shape) with its own learning rates, merged, in eval mode;
    `whole`: instead every weight of a copy of the base trained at lora_lr (not an adapter: a reference)."""
    torch.manual_seed(0)  # LoRA dropout and the base's dropout: the same draws on every run
    model: Any
    if whole:
        model = copy.deepcopy(base)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lora_lr}]
    else:
        model = lora.wrap(base, lora.AdapterSpec(token_rows=tuple(rows)), 0)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if ".lora_" in n], "lr": lora_lr}]
        groups += [{"params": [p for n, p in named if ".lora_" not in n], "lr": rows_lr}]
    for group in groups:
        if group["lr"] <= 0:
            for p in group["params"]:
                p.requires_grad_(False)
    opt = torch.optim.AdamW([g for g in groups if g["lr"] > 0 and g["params"]], betas=(0.9, 0.98))
    rng, inner = np.random.default_rng(0), model if whole else model.get_base_model()
    for _ in range(epochs):
        model.train()
        for batch in lora.batches(windows, 32, rng):
            keep = batch.targets > 0
            hidden = model(batch.items, batch.timestamps)
            loss = next_item_loss(
                "full_ce", hidden[keep], batch.targets[keep], inner.item_embeddings(), inner.logit_scale()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval() if whole else lora.merge(model.eval())


def windows_for(
    known: pd.DataFrame, cyc: Cycle, cutoff: pd.Timestamp, cfg: Config, max_len: int, replay: float
) -> tuple[list[lora.Window], list[int]]:
    """The training windows of one variant (see the module docstring) and the new items' rows."""
    # the cycle's own replay share when REPLAY is one; otherwise its replay windows are not used
    share = replay if 0 <= replay < 1 else 0.0
    data = cycle_data(known, cyc, cutoff, max_len, cfg.lora.holdout_share, share, 0)
    if 0 <= replay < 1:
        return data.windows, data.new_items
    rng = np.random.default_rng(0)
    older = known[known["timestamp"] < (cyc.start if replay > 1 else cutoff)]
    if replay > 1:
        return data.new_windows + replay_windows(older, int(replay), max_len, rng), data.new_items
    since, _ = new_event_windows(known[known["timestamp"] < data.holdout.start], cutoff, max_len)
    n = sum(w.n_targets for w in since)
    share = -replay
    return since + replay_windows(older, int(round(n * share / (1 - share))), max_len, rng), data.new_items


def variants(cfg: Config, events: pd.DataFrame, specs: list[str], full: bool) -> dict[str, Any]:
    """Mean NDCG@10 gain over the frozen base on the validation cycles, per variant (and full retrain)."""
    parsed = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        a, b, e, r = rest.split("/")
        parsed[name] = (float(a), float(b), int(e), float(r))
    clock = ReplayClock.from_config(cfg.clock)
    frozen = fb.train_fm_recipe(cfg, events[events["timestamp"] < clock.start], fb.CACHE)
    max_len = frozen.model.config.max_len
    arms = ["frozen", *parsed] + (["full"] if full else [])
    per: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, float] = dict.fromkeys(parsed, 0.0)
    cycles = clock.cycles()
    for cyc, nxt in zip(cycles[:-1], cycles[1:], strict=True):
        known = events[events["timestamp"] < cyc.as_of]
        models = {"frozen": frozen.model}
        for name, (lora_lr, rows_lr, epochs, replay) in parsed.items():
            wins, rows = windows_for(known, cyc, clock.start, cfg, max_len, replay)
            t0 = time.process_time()
            whole = name.startswith("whole")
            models[name] = train(frozen.model, wins, rows, lora_lr, rows_lr, epochs, whole)
            cpu[name] += time.process_time() - t0
        if full:
            models["full"] = fb.train_fm_recipe(cfg, known, fb.CACHE).model
        for arm, model in models.items():
            per[arm].append(float(ndcg(model, events, nxt).mean()))
        print(cyc.name, {a: round(v[-1], 5) for a, v in per.items()}, flush=True)
    base = np.array(per["frozen"])
    return {
        "cycles": [c.name for c in cycles[:-1]],
        "ndcg@10": per,
        "mean_gain": {a: float(np.mean(np.array(v) - base)) for a, v in per.items()},
        "train_cpu_s": cpu,
        "variants": {
            n: dict(zip(("lora_lr", "rows_lr", "epochs", "replay"), v, strict=True))
            for n, v in parsed.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the asked diagnostics; merge them into the results file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument(
        "--epochs", type=int, default=13, help="FM epoch budget of the frozen base and full retrains"
    )
    p.add_argument(
        "--split", action="store_true", help="split the full retrain's gain by target (benchmark cycles)"
    )
    p.add_argument("--variants", nargs="*", default=[], help="adapter variants on the validation cycles")
    p.add_argument("--full", action="store_true", help="with --variants: the daily full retrain too (slow)")
    p.add_argument("--cycles", type=int, default=8, help="validation comparisons")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = fb.recipe(load_config(args.params), args.epochs)
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.split:
        out["split"] = split(cfg, events) | {"command": command}
    if args.variants or args.full:
        got = variants(ft.validation_clock(cfg, args.cycles), events, args.variants, args.full)
        old = out.get("validation", {})
        if old.get("cycles") == got["cycles"]:
            for key in ("ndcg@10", "mean_gain", "train_cpu_s", "variants"):
                got[key] = old.get(key, {}) | got[key]
        got.setdefault("commands", []).extend(old.get("commands", []) + [command])
        out["validation"] = got
        print("mean gain over frozen:", {a: round(v, 5) for a, v in got["mean_gain"].items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
