"""Training loop shared by HSTU and SASRec, plus safetensors checkpoints and model construction.

AdamW, dropout, fixed seeds, next-item loss at every position, validation NDCG@10 after every epoch with
early stopping (patience) and an optional wall-clock budget; the best epoch's weights are restored at the
end and, if a directory is given, written as safetensors with their config JSON. An `on_epoch` callback
receives every epoch's record so the caller can log it (e.g. to MLflow) without this module knowing how.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from models.evaluate import evaluate
from models.hstu import HSTU, HSTUConfig, require
from models.losses import LOSS_NAMES, next_item_loss
from models.sasrec import SASRec, SASRecConfig
from models.sequences import Batch, EvalSet, Sequences, training_batches

RecModel = HSTU | SASRec
MODEL_TYPES: dict[str, tuple[type, type[RecModel]]] = {
    "hstu": (HSTUConfig, HSTU),
    "sasrec": (SASRecConfig, SASRec),
}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SELECTION_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; frozen and validated on construction."""

    loss: str = "full_ce"  # 'full_ce' (all items) or 'sampled_softmax' (in-batch + uniform negatives)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # users per batch
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    time_budget_s: float | None = None  # stop after the epoch that crosses this wall-clock budget
    seed: int = 0
    n_uniform_negatives: int = 512  # sampled_softmax: uniform random negatives shared by the batch
    n_inbatch_negatives: int = 512  # sampled_softmax: other positions' targets used as negatives
    pair_loss_weight: float = 0.0  # HSTU only: weight of the target-aware pair (M-FALCON) loss
    pair_negatives: int = 4  # HSTU only: other users' targets scored as negatives in the pair loss
    bf16_logits: bool = False  # full_ce: (N, n_items) logits matmul in bfloat16, loss in float32
    random_windows: bool = False  # histories longer than max_len+1: a random window each epoch
    eval_batch_size: int = 1024
    progress: bool = True  # tqdm bar with loss and tokens/s

    def __post_init__(self) -> None:
        name = type(self).__name__
        require(self.loss in LOSS_NAMES, name, "loss", self.loss, f"must be one of {LOSS_NAMES}")
        require(self.lr > 0, name, "lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, name, "weight_decay", self.weight_decay, "must be >= 0")
        require(self.batch_size >= 1, name, "batch_size", self.batch_size, "must be >= 1")
        require(self.max_epochs >= 1, name, "max_epochs", self.max_epochs, "must be >= 1")
        require(self.patience >= 1, name, "patience", self.patience, "must be >= 1")
        require(
            self.time_budget_s is None or self.time_budget_s > 0,
            name,
            "time_budget_s",
            self.time_budget_s,
            "must be > 0 or None",
        )
        require(
            self.n_uniform_negatives >= 0,
            name,
            "n_uniform_negatives",
            self.n_uniform_negatives,
            "must be >= 0",
        )
        require(
            self.n_inbatch_negatives >= 0,
            name,
            "n_inbatch_negatives",
            self.n_inbatch_negatives,
            "must be >= 0",
        )
        require(
            self.loss != "sampled_softmax" or self.n_uniform_negatives + self.n_inbatch_negatives > 0,
            name,
            "n_uniform_negatives",
            self.n_uniform_negatives,
            "sampled_softmax needs n_uniform_negatives + n_inbatch_negatives > 0",
        )
        require(self.pair_loss_weight >= 0, name, "pair_loss_weight", self.pair_loss_weight, "must be >= 0")
        require(self.pair_negatives >= 1, name, "pair_negatives", self.pair_negatives, "must be >= 1")
        require(self.eval_batch_size >= 1, name, "eval_batch_size", self.eval_batch_size, "must be >= 1")


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did: mean training loss, throughput, and validation metrics."""

    epoch: int
    loss: float
    tokens_per_s: float
    train_seconds: float  # optimiser time of this epoch
    metrics: dict[str, float]  # validation metrics (hr@k, ndcg@k, mrr)
    improved: bool


@dataclass
class TrainResult:
    """Outcome of `train`: per-epoch records, the best epoch and cost figures."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0  # optimiser time, all epochs
    wall_seconds: float = 0.0  # including validation
    tokens_per_s: float = 0.0  # supervised positions per optimiser second
    stopped: str = ""  # 'patience', 'time_budget' or 'max_epochs'
    checkpoint: str | None = None

    @property
    def n_epochs(self) -> int:
        """Epochs run."""
        return len(self.epochs)


# ---- model construction and checkpoints --------------------------------------------------------------


def build_model(model_type: str, config: dict[str, Any], codes: torch.Tensor | None = None) -> RecModel:
    """Construct 'hstu' or 'sasrec' from a plain config dict (e.g. a params.yaml section)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is unknown: use one of {tuple(MODEL_TYPES)}")
    config_cls, model_cls = MODEL_TYPES[model_type]
    return model_cls(config_cls(**config), codes)


def save_checkpoint(model: RecModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors and config.json (model type, model config, extra) into directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {"model_type": model.model_type, "model_config": asdict(model.config), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def load_checkpoint(directory: str | Path) -> RecModel:
    """Rebuild a model saved by save_checkpoint, in eval mode."""
    src = Path(directory)
    meta = json.loads((src / CONFIG_FILE).read_text())
    state = load_file(str(src / WEIGHTS_FILE))
    cfg = meta["model_config"]
    codes = state.get("item_emb.codes") if cfg.get("n_code_levels", 0) > 0 else None
    model = build_model(meta["model_type"], cfg, codes)
    model.load_state_dict(state)
    return model.eval()


# ---- training ----------------------------------------------------------------------------------------


def _batch_loss(model: RecModel, batch: Batch, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Next-item loss over all supervised positions, plus the weighted pair loss for HSTU."""
    pair_loss = torch.zeros(())
    if isinstance(model, HSTU) and cfg.pair_loss_weight > 0:
        cands = _pair_candidates(batch.targets[:, -1], cfg.pair_negatives, gen)  # (B, 1+P), positive first
        hidden, h_cand = model.encode_with_candidates(batch.items, batch.timestamps, cands)
        positive = torch.zeros(len(cands), dtype=torch.long)
        pair_loss = nn.functional.cross_entropy(model.pair_score(h_cand, cands), positive)
    else:
        hidden = model(batch.items, batch.timestamps)  # (B, T, D)
    keep = batch.targets > 0
    table = model.item_embeddings()  # (n_items+1, D)
    loss = next_item_loss(
        cfg.loss,
        hidden[keep],
        batch.targets[keep],
        table,
        model.logit_scale(),
        cfg.n_uniform_negatives,
        cfg.n_inbatch_negatives,
        gen,
        cfg.bf16_logits,
    )
    return loss + cfg.pair_loss_weight * pair_loss


def _pair_candidates(last_targets: torch.Tensor, n_neg: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 1+n_neg) candidates: each row's own next item, then other rows' next items as negatives."""
    b = last_targets.shape[0]
    shifts = torch.randint(1, max(b, 2), (n_neg,), generator=gen)  # (P,)
    idx = (torch.arange(b).unsqueeze(1) + shifts.unsqueeze(0)) % b  # (B, P)
    return torch.cat([last_targets.unsqueeze(1), last_targets[idx]], dim=1)


def _train_epoch(
    model: RecModel,
    opt: torch.optim.Optimizer,
    data: Sequences,
    cfg: TrainConfig,
    max_len: int,
    rng: np.random.Generator,
    gen: torch.Generator,
    desc: str,
) -> tuple[float, int, float]:
    """One pass over the training users. Returns mean loss, supervised tokens, optimiser seconds."""
    model.train()
    total_loss, tokens, start = 0.0, 0, time.perf_counter()
    n_batches = int(np.ceil((data.lengths() >= 2).sum() / cfg.batch_size))
    bar = tqdm(
        training_batches(data, cfg.batch_size, max_len, rng, cfg.random_windows),
        total=n_batches,
        desc=desc,
        disable=not cfg.progress,
        mininterval=5.0,
        leave=False,
    )
    for batch in bar:
        loss = _batch_loss(model, batch, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = batch.n_targets()
        total_loss, tokens = total_loss + float(loss.detach()) * n, tokens + n
        bar.set_postfix(
            loss=f"{total_loss / tokens:.4f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}"
        )
    return total_loss / max(tokens, 1), tokens, time.perf_counter() - start


def train(
    model: RecModel,
    train_data: Sequences,
    valid_data: EvalSet,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train with early stopping on validation NDCG@10; restore (and optionally save) the best weights."""
    torch.manual_seed(cfg.seed)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    max_len = model.config.max_len
    result, best_state, wall0 = TrainResult(stopped="max_epochs"), None, time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        loss, tokens, secs = _train_epoch(model, opt, train_data, cfg, max_len, rng, gen, f"epoch {epoch}")
        metrics = evaluate(model, valid_data, max_len, cfg.eval_batch_size)
        improved = metrics[SELECTION_METRIC] > result.best_metrics.get(SELECTION_METRIC, -1.0)
        record = EpochRecord(epoch, loss, tokens / max(secs, 1e-9), secs, metrics, improved)
        result.epochs.append(record)
        result.train_seconds += secs
        if improved:
            result.best_epoch, result.best_metrics = epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(record)
        if epoch - result.best_epoch >= cfg.patience:
            result.stopped = "patience"
            break
        if cfg.time_budget_s is not None and time.perf_counter() - wall0 >= cfg.time_budget_s:
            result.stopped = "time_budget"
            break
    return _finish(model, result, best_state, cfg, wall0, checkpoint_dir)


def _finish(
    model: RecModel,
    result: TrainResult,
    best_state: dict[str, torch.Tensor] | None,
    cfg: TrainConfig,
    wall0: float,
    checkpoint_dir: str | Path | None,
) -> TrainResult:
    """Restore the best weights, fill in cost figures, and save the checkpoint if asked."""
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.wall_seconds = time.perf_counter() - wall0
    total_tokens = sum(r.tokens_per_s * r.train_seconds for r in result.epochs)
    result.tokens_per_s = total_tokens / max(result.train_seconds, 1e-9)
    if checkpoint_dir is not None:
        extra = {
            "train_config": asdict(cfg),
            "best_epoch": result.best_epoch,
            "best_metrics": result.best_metrics,
        }
        result.checkpoint = str(save_checkpoint(model, checkpoint_dir, extra))
    return result
