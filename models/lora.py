"""LoRA adapters on the HSTU foundation model (peft), and the windows and loop that train them.

The base stays frozen. LoRA (Hu et al. 2021) adds a low-rank update B·A (scaled by alpha/r) to the
target linears; in HSTU those are each layer's `f1` (the fused U/V/Q/K projection, i.e. attention) and
`f2` (the gated output projection, HSTU's feed-forward part). Items first seen after the base's training
cutoff have embedding rows the base never trained; peft's trainable tokens (`trainable_token_indices` on
`item_emb.ids`) make exactly those rows trainable and store them in the adapter, so the daily update can
learn new items while the rest of the table stays the base's. The item table is both the input embedding
and the output (scoring) table, so a learned row serves both.

Training data are windows of at most max_len+1 events of one user: inputs are the first events, targets
the next item at each position, and only positions at or after `first_target` are supervised (earlier
events are context the user had before the new events).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm import tqdm

from models.hstu import HSTU
from models.losses import next_item_loss
from models.sequences import Batch, length_grouped, pad_left

ITEM_EMBEDDING = "item_emb.ids"  # the HSTU module whose rows become trainable tokens


@dataclass(frozen=True)
class AdapterSpec:
    """What the adapter adapts: LoRA on `target_modules` and trainable rows `token_rows` of the item table."""

    target_modules: tuple[str, ...] = ("f1", "f2")
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    token_rows: tuple[int, ...] = ()  # item_idx whose embedding rows are trained (new items)

    def peft_config(self) -> LoraConfig:
        """The peft LoraConfig for this spec."""
        tokens = {ITEM_EMBEDDING: sorted(self.token_rows)} if self.token_rows else None
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # annotated int, used as a number
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            trainable_token_indices=tokens,
        )


def check_targets(base: HSTU, target_modules: Sequence[str]) -> None:
    """Raise ValueError naming a target module that matches no nn.Linear of the base."""
    linears = {name.rsplit(".", 1)[-1] for name, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in target_modules if t not in linears]
    if missing:
        raise ValueError(
            f"target_modules {missing} match no linear layer of {type(base).__name__}; its linears are "
            f"{sorted(linears)}"
        )


def wrap(base: HSTU, spec: AdapterSpec, seed: int = 0) -> PeftModel:
    """A fresh adapter (LoRA B = 0: outputs equal the base's) on a copy of `base`; `base` is untouched.

    LoRA A is initialised from `seed` (without touching the global RNG), so the same inputs give the
    same adapter.
    """
    check_targets(base, spec.target_modules)
    bad = [i for i in spec.token_rows if not 1 <= i <= base.config.n_items]
    if bad:
        raise ValueError(f"token_rows {bad[:5]} are outside the item table 1..{base.config.n_items}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(copy.deepcopy(base), spec.peft_config())


def load(base: HSTU, directory: str | Path) -> PeftModel:
    """The adapter saved by `save_pretrained` in `directory`, on a copy of `base`, in eval mode."""
    return PeftModel.from_pretrained(copy.deepcopy(base), str(directory)).eval()


def merge(model: PeftModel) -> HSTU:
    """The adapter folded into the base weights (peft merge_and_unload), on a copy: a plain HSTU to serve."""
    merged = copy.deepcopy(model).merge_and_unload()
    assert isinstance(merged, HSTU)
    return merged.eval()


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (LoRA A/B and trainable token rows) by name."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if ".lora_" in k or "trainable_tokens_delta" in k
    }


def token_rows(model: PeftModel) -> list[int]:
    """The item rows an adapter trains (empty when it has none)."""
    rows = getattr(model.peft_config["default"], "trainable_token_indices", None) or {}
    return list(rows.get(ITEM_EMBEDDING, []))


@torch.no_grad()
def warm_start(model: PeftModel, source: PeftModel) -> int:
    """Copy `source`'s LoRA weights and learned rows of items both train into `model`; return rows copied.

    Both must sit on the same base with the same LoRA shapes; the new adapter's token rows are a superset
    of the old one's as the catalogue only grows, and rows only `model` trains keep the base's values.
    """
    src = adapter_state(source)
    dst = dict(model.named_parameters())
    for name, value in src.items():
        if ".lora_" in name and name in dst and dst[name].shape == value.shape:
            dst[name].copy_(value)
    old_rows, new_rows = token_rows(source), token_rows(model)
    if not old_rows or not new_rows:
        return 0
    old_delta = next(v for k, v in src.items() if "trainable_tokens_delta" in k)  # (n_old, D)
    new_delta = next(p for k, p in dst.items() if "trainable_tokens_delta" in k)  # (n_new, D)
    where = {item: pos for pos, item in enumerate(new_rows)}
    shared = [(where[item], pos) for pos, item in enumerate(old_rows) if item in where]
    for new_pos, old_pos in shared:
        new_delta[new_pos] = old_delta[old_pos]
    return len(shared)


# ---- training windows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Up to max_len+1 time-ordered events of one user; targets from index `first_target` on are trained."""

    items: np.ndarray  # (L+1,) int64 item_idx
    timestamps: np.ndarray  # (L+1,) int64 unix seconds
    first_target: int  # index (>= 1) of the first event that is a supervised target

    @property
    def n_targets(self) -> int:
        """Supervised positions."""
        return max(0, len(self.items) - self.first_target)


def user_windows(items: np.ndarray, timestamps: np.ndarray, first_new: int, max_len: int) -> list[Window]:
    """Windows covering every event from index `first_new` on as a target, with earlier events as context."""
    first_new, n = max(1, first_new), len(items)
    out, end = [], n
    while end > first_new:
        start = max(0, end - (max_len + 1))
        first = max(first_new, start + 1)
        out.append(Window(items[start:end], timestamps[start:end], first - start))
        end = first  # the next window ends where this one's targets begin
    return out


def window_batch(windows: Sequence[Window]) -> Batch:
    """Left-padded inputs and targets; targets before each window's first_target are 0 (not trained)."""
    t = max(len(w.items) for w in windows) - 1
    targets = []
    for w in windows:
        tgt = w.items[1:].copy()
        tgt[: w.first_target - 1] = 0
        targets.append(tgt)
    return Batch(
        items=torch.from_numpy(pad_left([w.items[:-1] for w in windows], t)),
        timestamps=torch.from_numpy(pad_left([w.timestamps[:-1] for w in windows], t)),
        targets=torch.from_numpy(pad_left(targets, t)),
    )


def batches(
    windows: Sequence[Window], batch_size: int, rng: np.random.Generator, by_length: bool = False
) -> Iterator[Batch]:
    """Shuffled batches of windows; `by_length`: of similar length, as the FM's own training batches them,
    and cut by supervised targets rather than windows, each batch about as many targets as batch_size
    random windows have (less padding; a batch of short windows is not a short batch)."""
    if not by_length:
        order = rng.permutation(len(windows))
        groups: Iterator[np.ndarray] = (order[s : s + batch_size] for s in range(0, len(order), batch_size))
    else:
        lengths = np.array([len(w.items) for w in windows])
        targets = np.array([w.n_targets for w in windows], dtype=np.float64)
        groups = length_grouped(lengths, np.arange(len(windows)), batch_size, rng, targets)
    for group in groups:
        yield window_batch([windows[i] for i in group])


# ---- fine-tuning ------------------------------------------------------------------------------------

LR_SCHEDULES = ("constant", "linear")


@dataclass
class FinetuneResult:
    """Per-epoch mean loss (and validation score), supervised targets per epoch, the epoch whose adapter
    was kept, and CPU seconds of the whole fine-tuning (validation included)."""

    losses: list[float] = field(default_factory=list)
    targets_per_epoch: int = 0
    cpu_seconds: float = 0.0
    val_scores: list[float] = field(default_factory=list)
    best_epoch: int = 0
    lrs: list[float] = field(default_factory=list)  # the learning rate after each epoch's last step


def finetune(
    model: PeftModel,
    windows: Sequence[Window],
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    loss: str = "full_ce",
    seed: int = 0,
    progress: bool = True,
    by_length: bool = False,
    validate: Callable[[PeftModel], float] | None = None,
    patience: int = 1,
    n_uniform: int = 512,
    n_inbatch: int = 512,
    schedule: str = "constant",
) -> FinetuneResult:
    """Train only the adapter's parameters (AdamW) on the windows' supervised targets; end in eval mode.

    With `validate` (a score of the model in eval mode, higher is better) run after each epoch, `epochs` is
    a maximum: training stops after `patience` epochs without a better score, and the adapter of the best
    epoch is restored (early stopping as in the FM's own training). `loss` is models.losses' name;
    sampled_softmax draws `n_uniform` uniform and `n_inbatch` in-batch negatives per batch. `schedule`:
    constant lr, or linear (decays from lr to 0 over the steps of `epochs` epochs, the usual fine-tuning
    schedule, e.g. transformers' default; an early stop ends it before 0)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is unknown: use one of {LR_SCHEDULES}")
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    result, cpu0 = FinetuneResult(targets_per_epoch=sum(w.n_targets for w in windows)), time.process_time()
    base: HSTU = model.get_base_model()  # type: ignore[assignment]
    best: dict[str, torch.Tensor] | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    bar = tqdm(range(epochs), desc="lora", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        total, n = 0.0, 0
        epoch_batches = list(batches(windows, batch_size, rng, by_length))
        if scheduler is None and schedule == "linear":  # steps per epoch vary a little by_length
            steps = epochs * len(epoch_batches)

            def decay(step: int, n: int = steps) -> float:
                return max(0.0, 1.0 - step / n)

            scheduler = torch.optim.lr_scheduler.LambdaLR(opt, decay)
        for batch in epoch_batches:
            keep = batch.targets > 0
            hidden = model(batch.items, batch.timestamps)  # (B, T, D)
            value = next_item_loss(
                loss,
                hidden[keep],
                batch.targets[keep],
                base.item_embeddings(),
                base.logit_scale(),
                n_uniform,
                n_inbatch,
                gen,
            )
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            total, n = total + float(value.detach()) * int(keep.sum()), n + int(keep.sum())
        result.losses.append(total / max(n, 1))
        result.lrs.append(float(opt.param_groups[0]["lr"]))
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        if validate is None:
            continue
        model.eval()
        result.val_scores.append(float(validate(model)))
        epoch = len(result.val_scores)
        score = result.val_scores[-1]
        if math.isnan(score):  # nothing scoreable: no early stopping
            continue
        if best is None or score > max(v for v in result.val_scores[:-1] if not math.isnan(v)):
            best = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
            result.best_epoch = epoch
        elif epoch - result.best_epoch >= patience:
            break
    model.eval()
    if best is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in best:
                    p.copy_(best[name])
    result.best_epoch = result.best_epoch or len(result.losses)
    result.cpu_seconds = time.process_time() - cpu0
    return result
