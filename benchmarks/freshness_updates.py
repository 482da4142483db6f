"""Which daily update of the frozen base helps the next cycle: what is trained, and on which targets.

On a sequence-format file aligned at the end (benchmarks/freshness.py --sequence, one comparison), from the
benchmark's cached frozen base (run freshness.py --sequence FILE --cycles 1 first: it trains and caches
it), each variant updates a copy of the base on the cycle's training events (the cycle minus the gate's
holdout) and is scored, like the benchmark's arms, on the holdout and on the next cycle (NDCG@10, all items,
seen items excluded). No gate, no registry: the update alone. A variant is KIND:TARGETS:LR:EPOCHS with

  KIND     lora (peft LoRA on lora.target_modules, rows for new items) | lorarows (and rows for every item
           the cycle trained on) | whole (every weight of the base)
  TARGETS  new (only the new events are targets: the windows of supervise: new) | replay (the replay
           windows alone) | window (every position of the new events' windows: supervise: window)

and optional further fields: `by_length` (batches of windows of similar length, models.lora.batches, instead
of random ones: what grouping saves in train_cpu_s and what it costs), `sampled` (sampled softmax over
fm.train's negatives instead of the full softmax: lora.loss) and `linear` (lr decaying linearly to 0
over the epochs: lora.lr_schedule).

    python benchmarks/freshness_updates.py --sequence ../shared/data/amazon/Toys_and_Games.txt

writes benchmarks/results/freshness_updates.json (each variant's NDCG@10 and training CPU seconds).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

import freshness as fb  # noqa: E402

from models import lora  # noqa: E402
from models.evaluate import metrics_from_ranks  # noqa: E402
from models.hstu import HSTU  # noqa: E402
from specrec.clock import ReplayClock  # noqa: E402
from specrec.config import load_config  # noqa: E402
from specrec.io import read_parquet  # noqa: E402
from specrec.lora.data import cycle_data  # noqa: E402
from specrec.lora.finetune import spec as adapter_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "freshness_updates.json"
VARIANTS = [
    "lora:new:0.0001:5",
    "lora:new:0.001:1",
    "whole:new:0.0001:1",
    "whole:replay:0.0001:1",
    "whole:window:0.0001:1",
    "whole:window:0.0003:1",
    "lora:window:0.001:1",
    "lorarows:window:0.001:1",
]


def ndcg10(ranks: np.ndarray) -> float:
    """Mean NDCG@10 of 0-based ranks."""
    return metrics_from_ranks(torch.from_numpy(ranks), (10,))["ndcg@10"]


def update(
    base: HSTU,
    kind: str,
    windows: list[lora.Window],
    lr: float,
    epochs: int,
    data: Any,
    cfg: Any,
    by_length: bool = False,
    loss: str = "full_ce",
    schedule: str = "constant",
) -> tuple[torch.nn.Module, float]:
    """A copy of the base trained by the variant; the model to score and the training CPU seconds."""
    lc = cfg.lora
    if kind == "whole":
        model = copy.deepcopy(base)
        for p in model.parameters():
            p.requires_grad_(True)
        wrapped: Any = _Whole(model)
    elif kind in ("lora", "lorarows"):
        # the daily path's adapter spec, with rows for new items (and for every trained-on item: lorarows)
        with_rows = dataclasses.replace(lc, new_item_rows=True, cycle_item_rows=kind == "lorarows")
        spec = adapter_spec(dataclasses.replace(cfg, lora=with_rows), data.new_items, data.cycle_items)
        wrapped = lora.wrap(copy.deepcopy(base), spec, lc.seed)
    else:
        raise SystemExit(f"error: variant kind {kind!r}: use lora, lorarows or whole")
    tc = cfg.fm.train
    result = lora.finetune(
        wrapped,
        windows,
        epochs,
        lr,
        lc.batch_size,
        loss=loss,
        seed=lc.seed,
        by_length=by_length,
        n_uniform=tc.n_uniform_negatives,
        n_inbatch=tc.n_inbatch_negatives,
        schedule=schedule,
    )
    served = wrapped.model if kind == "whole" else lora.merge(wrapped)
    return served.eval(), result.cpu_seconds


class _Whole(torch.nn.Module):
    """The base in the shape lora.finetune trains (get_base_model), every weight trainable."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def get_base_model(self) -> HSTU:
        return self.model

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        return self.model(items, timestamps)


def main(argv: list[str] | None = None) -> None:
    """Run the variants, print a line each, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequence", type=Path, required=True, help="a sequence-format file")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--epochs", type=int, default=13, help="the frozen base's epoch budget (its cache key)")
    p.add_argument("--variants", nargs="*", default=VARIANTS, help="KIND:TARGETS:LR:EPOCHS (see above)")
    p.add_argument("--seed", type=int, default=None, help="lora.seed for the updates (init, batches)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = fb.recipe(load_config(args.params), args.epochs)
    data_seed = cfg.lora.seed
    if args.seed is not None:  # the updates' seed only: the frozen base and the cycle's data stay the same
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, seed=args.seed))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = fb.sequence_project(cfg, args.sequence, "1h", 2, Path(tmp), "end")
        events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
        clock = ReplayClock.from_config(cfg.clock)
        cycle, nxt = clock.cycles()[:2]
        frozen = fb.train_fm_recipe(cfg, events[events["timestamp"] < clock.start], fb.CACHE).model
        known = events[events["timestamp"] < cycle.as_of]
        lc, max_len = cfg.lora, frozen.config.max_len

        def data(supervise: str) -> Any:
            args_ = (known, cycle, clock.start, max_len, lc.holdout_share, lc.replay_share, data_seed)
            return cycle_data(*args_, supervise=supervise)

        new, whole = data("new"), data("window")

        def score(model: HSTU) -> dict[str, float]:
            return {
                "holdout_ndcg@10": ndcg10(fb.ranks(model, events, new.holdout)),
                "next_ndcg@10": ndcg10(fb.ranks(model, events, nxt)),
            }

        results["frozen"] = score(frozen)
        print("frozen", results["frozen"], flush=True)
        for name in args.variants:
            kind, targets, lr, epochs, *options = name.split(":")
            if unknown := set(options) - {"by_length", "sampled", "linear"}:
                raise SystemExit(
                    f"error: variant {name!r}: {sorted(unknown)}: options are by_length, sampled, linear"
                )
            windows = {"new": new.new_windows, "replay": new.replay_windows, "window": whole.new_windows}[
                targets
            ]
            t0 = time.perf_counter()
            model, cpu_s = update(
                frozen,
                kind,
                windows,
                float(lr),
                int(epochs),
                new,
                cfg,
                by_length="by_length" in options,
                loss="sampled_softmax" if "sampled" in options else "full_ce",
                schedule="linear" if "linear" in options else "constant",
            )
            r = score(model) | {"train_cpu_s": cpu_s, "targets": sum(w.n_targets for w in windows)}
            r["next_gain_over_frozen"] = r["next_ndcg@10"] - results["frozen"]["next_ndcg@10"]
            results[name] = r
            print(f"{name}: {r} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {
        "data": f"{args.sequence.name} (align end, step 1h, one comparison)",
        "variants": results,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
