"""Training loop shared by HSTU and SASRec, plus safetensors checkpoints and model construction.

AdamW, dropout, fixed seeds, next-item loss at every position, validation NDCG@10 after every epoch with
early stopping (patience) and an optional wall-clock budget; the best epoch's weights are restored at the
end and, if a directory is given, written as safetensors with their config JSON. An `on_epoch` callback
receives every epoch's record so the caller can log it (e.g. to MLflow) without this module knowing how.
Given a `Shard` (models.ddp) the same loop runs as one rank of a DistributedDataParallel group: rank 0
alone shows progress, calls `on_epoch` and writes the checkpoint; losses and metrics are the whole group's.
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

from models.ddp import Shard, wrap
from models.evaluate import compute_ranks, evaluate, metrics_from_ranks
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
PAIR_NEGATIVES = ("batch", "retrieval")


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
    pair_negatives: int = 4  # HSTU only: negatives per target in the pair loss
    # where the pair loss's negatives come from: "batch" (other users' targets: easy negatives) or
    # "retrieval" (sampled from the model's own top `pair_hard_pool` items by its dot product at that
    # step, seen items and the target excluded: the candidates the pair head has to rank when served)
    pair_negatives_from: str = "batch"
    pair_hard_pool: int = 200
    # HSTU only: points of each history the pair loss trains at per batch: the newest (1, the default)
    # or the newest plus pair_cuts-1 random supervised positions (one M-FALCON pass, candidates masked to
    # the history up to their cut), so the pair head sees ~pair_cuts x more examples per epoch
    pair_cuts: int = 1
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
        require(
            self.pair_negatives_from in PAIR_NEGATIVES,
            name,
            "pair_negatives_from",
            self.pair_negatives_from,
            f"must be one of {PAIR_NEGATIVES}",
        )
        require(self.pair_cuts >= 1, name, "pair_cuts", self.pair_cuts, "must be >= 1")
        require(
            self.pair_hard_pool >= self.pair_negatives,
            name,
            "pair_hard_pool",
            self.pair_hard_pool,
            f"must be >= pair_negatives ({self.pair_negatives})",
        )
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
    step_losses: tuple[float, ...] = ()  # the loss of every optimiser step of the epoch, in order


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

    @property
    def step_losses(self) -> list[float]:
        """The loss of every optimiser step, all epochs in order (the loss curve)."""
        return [loss for r in self.epochs for loss in r.step_losses]


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


def _batch_loss(
    model: RecModel, batch: Batch, cfg: TrainConfig, gen: torch.Generator, part: slice | None = None
) -> torch.Tensor:
    """Next-item loss over all supervised positions, plus the weighted pair loss for HSTU.

    With `part` (one DDP rank's rows) the result is those rows' share of the whole batch's loss: their
    terms summed over the whole batch's count, so the ranks' shares add up to the one-process loss.
    Negatives come from the whole batch with the shared generator, so every rank draws what one process
    draws, and a rank with no rows still draws them to keep its generator in step.
    """
    rows = slice(None) if part is None else part
    items, times, targets = batch.items[rows], batch.timestamps[rows], batch.targets[rows]  # (b, T)
    pair_loss = torch.zeros(())
    if isinstance(model, HSTU) and cfg.pair_loss_weight > 0:
        cuts = None
        if cfg.pair_cuts == 1 and cfg.pair_negatives_from == "batch":
            cands = _pair_candidates(batch.targets[:, -1], cfg.pair_negatives, gen)[rows]  # (b, 1+P), pos 1st
        else:
            cands, cuts = _cut_pair_candidates(model, batch, cfg, gen)
            cands, cuts = cands[rows], cuts[rows]  # (b, K*(1+P)) each
        hidden, h_cand = model.encode_with_candidates(items, times, cands, cuts=cuts)
        groups = model.pair_score(h_cand, cands).reshape(-1, 1 + cfg.pair_negatives)  # positive first
        positive = torch.zeros(len(groups), dtype=torch.long)
        pair_loss = nn.functional.cross_entropy(groups, positive)
    else:
        hidden = model(items, times)  # (b, T, D)
    keep = targets > 0
    table = model.item_embeddings()  # (n_items+1, D)
    loss = next_item_loss(
        cfg.loss,
        hidden[keep],
        targets[keep],
        table,
        model.logit_scale(),
        cfg.n_uniform_negatives,
        cfg.n_inbatch_negatives,
        gen,
        cfg.bf16_logits,
        None if part is None else batch.targets[batch.targets > 0],  # in-batch negatives: whole batch
    )
    if part is None:
        return loss + cfg.pair_loss_weight * pair_loss
    if len(items) == 0:  # a small last batch left this rank no rows: it still joins the all-reduce
        return hidden.sum() * 0.0
    share = loss * (int(keep.sum()) / batch.n_targets())
    return share + cfg.pair_loss_weight * pair_loss * (len(items) / len(batch.items))


def _pair_candidates(last_targets: torch.Tensor, n_neg: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 1+n_neg) candidates: each row's own next item, then other rows' next items as negatives."""
    b = last_targets.shape[0]
    shifts = torch.randint(1, max(b, 2), (n_neg,), generator=gen)  # (P,)
    idx = (torch.arange(b).unsqueeze(1) + shifts.unsqueeze(0)) % b  # (B, P)
    return torch.cat([last_targets.unsqueeze(1), last_targets[idx]], dim=1)


@torch.no_grad()
def _cut_pair_candidates(
    model: HSTU, batch: Batch, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates and cuts (B, K*(1+P)) for the pair loss at K = pair_cuts points of each history: the
    newest position and K-1 supervised positions drawn at random; per point its next item, then P
    negatives (other rows' next items at their same point, or the model's own top `pair_hard_pool` items
    there, the window's items and the target excluded). Computed for the whole batch, so every DDP rank
    draws the same."""
    b, t = batch.targets.shape
    k, n_neg = cfg.pair_cuts, cfg.pair_negatives
    cuts = torch.full((b, 1), t - 1)  # (B, 1): the newest point
    if k > 1:
        weights = (batch.targets[:, :-1] > 0).float() + 1e-9  # (B, T-1): supervised, but the newest
        others = torch.multinomial(weights, k - 1, replacement=True, generator=gen)  # (B, K-1)
        others = torch.where(batch.targets.gather(1, others) > 0, others, t - 1)  # a row with one target
        cuts = torch.cat([cuts, others], dim=1)  # (B, K)
    target = batch.targets.gather(1, cuts)  # (B, K)
    if cfg.pair_negatives_from == "batch":
        shifts = torch.randint(1, max(b, 2), (n_neg,), generator=gen)  # (P,)
        idx = (torch.arange(b).unsqueeze(1) + shifts.unsqueeze(0)) % b  # (B, P)
        neg = target[idx].transpose(1, 2)  # (B, K, P): row idx[b, p]'s next item at the same point
    else:
        states = model(batch.items, batch.timestamps)  # (B, T, D)
        u = states.gather(1, cuts.unsqueeze(-1).expand(-1, -1, states.shape[-1]))  # (B, K, D)
        scores = u @ model.item_embeddings().T  # (B, K, n_items+1)
        scores[..., 0] = -torch.inf
        scores.scatter_(2, batch.items.unsqueeze(1).expand(b, k, t), -torch.inf)  # the window's items
        scores.scatter_(2, target.unsqueeze(-1), -torch.inf)
        top = scores.topk(min(cfg.pair_hard_pool, scores.shape[-1] - 1), dim=-1).indices  # (B, K, pool)
        pick = torch.rand(top.shape, generator=gen).argsort(dim=-1)[..., :n_neg]
        neg = top.gather(-1, pick)  # (B, K, P)
    cands = torch.cat([target.unsqueeze(-1), neg], dim=-1).reshape(b, k * (1 + n_neg))
    return cands, cuts.unsqueeze(-1).expand(b, k, 1 + n_neg).reshape(b, k * (1 + n_neg))


def _train_epoch(
    data: Sequences,
    cfg: TrainConfig,
    max_len: int,
    rng: np.random.Generator,
    step: Callable[[Batch], float],
    desc: str,
    show: bool,
) -> tuple[float, int, float, list[float]]:
    """One pass over the training users. Returns mean loss, supervised tokens, optimiser seconds and the
    loss of every step (under DDP: of the whole group's batch)."""
    total_loss, tokens, start, steps = 0.0, 0, time.perf_counter(), []
    n_batches = int(np.ceil((data.lengths() >= 2).sum() / cfg.batch_size))
    bar = tqdm(
        training_batches(data, cfg.batch_size, max_len, rng, cfg.random_windows),
        total=n_batches,
        desc=desc,
        disable=not show,
        mininterval=5.0,
        leave=False,
    )
    for batch in bar:
        step_loss = step(batch)
        n = batch.n_targets()
        total_loss, tokens = total_loss + step_loss * n, tokens + n
        steps.append(step_loss)
        bar.set_postfix(
            loss=f"{total_loss / tokens:.4f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}"
        )
    return total_loss / max(tokens, 1), tokens, time.perf_counter() - start, steps


def _local_step(
    model: RecModel, opt: torch.optim.Optimizer, cfg: TrainConfig, gen: torch.Generator
) -> Callable[[Batch], float]:
    """One optimiser step on a whole batch in this process; returns its loss."""

    def step(batch: Batch) -> float:
        model.train()
        loss = _batch_loss(model, batch, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _ddp_step(
    model: RecModel, opt: torch.optim.Optimizer, cfg: TrainConfig, gen: torch.Generator, shard: Shard
) -> Callable[[Batch], float]:
    """One DDP optimiser step on this rank's rows; returns the whole batch's loss (the shares summed)."""
    # Only the pair loss uses HSTU's candidate marker; every other parameter feeds each step's loss, also
    # on a rank left without rows (its zero loss still runs the model on an empty slice).
    find_unused = not (isinstance(model, HSTU) and cfg.pair_loss_weight > 0)
    ddp = wrap(model, lambda m, b, p: _batch_loss(m, b, cfg, gen, p), find_unused)  # type: ignore[arg-type]

    def step(batch: Batch) -> float:
        ddp.train()
        share = ddp(batch, shard.rows(len(batch.items)))
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; world_size x share makes that average the shares' sum.
        (share * shard.world_size).backward()
        opt.step()
        return shard.sum(float(share.detach()))

    return step


def _validate(
    model: RecModel, data: EvalSet, max_len: int, cfg: TrainConfig, shard: Shard | None
) -> dict[str, float]:
    """Validation metrics; with a shard each rank ranks its slice of users and the ranks are gathered."""
    if shard is None:
        return evaluate(model, data, max_len, cfg.eval_batch_size)
    part = shard.rows(len(data))
    hist = Sequences(data.histories.items[part], data.histories.timestamps[part])
    local = compute_ranks(model, EvalSet(hist, data.targets[part]), max_len, cfg.eval_batch_size)
    return metrics_from_ranks(shard.gather_rows(local, len(data)))


def train(
    model: RecModel,
    train_data: Sequences,
    valid_data: EvalSet,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    shard: Shard | None = None,
) -> TrainResult:
    """Train with early stopping on validation NDCG@10; restore (and optionally save) the best weights.

    `shard`: train as that rank of the initialised process group (DDP, batch_size is the global batch);
    every rank must call train with the same data and config.
    """
    main = shard is None or shard.is_main
    if shard is not None:
        rule = f"must be >= the {shard.world_size} DDP ranks it is split over"
        require(cfg.batch_size >= shard.world_size, "TrainConfig", "batch_size", cfg.batch_size, rule)
    torch.manual_seed(cfg.seed if shard is None else cfg.seed + shard.rank)  # dropout: own masks per rank
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    max_len = model.config.max_len
    result, best_state, wall0 = TrainResult(stopped="max_epochs"), None, time.perf_counter()
    step = _local_step(model, opt, cfg, gen) if shard is None else _ddp_step(model, opt, cfg, gen, shard)
    for epoch in range(1, cfg.max_epochs + 1):
        loss, tokens, secs, steps = _train_epoch(
            train_data, cfg, max_len, rng, step, f"epoch {epoch}", cfg.progress and main
        )
        metrics = _validate(model, valid_data, max_len, cfg, shard)
        improved = metrics[SELECTION_METRIC] > result.best_metrics.get(SELECTION_METRIC, -1.0)
        record = EpochRecord(epoch, loss, tokens / max(secs, 1e-9), secs, metrics, improved, tuple(steps))
        result.epochs.append(record)
        result.train_seconds += secs
        if improved:
            result.best_epoch, result.best_metrics = epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None and main:
            on_epoch(record)
        if epoch - result.best_epoch >= cfg.patience:
            result.stopped = "patience"
            break
        if cfg.time_budget_s is not None and _over_budget(wall0, cfg.time_budget_s, shard):
            result.stopped = "time_budget"
            break
    return _finish(model, result, best_state, cfg, wall0, checkpoint_dir if main else None)


def _over_budget(wall0: float, budget_s: float, shard: Shard | None) -> bool:
    """Whether the wall-clock budget is spent; under DDP rank 0's clock decides for every rank."""
    over = time.perf_counter() - wall0 >= budget_s
    return over if shard is None else shard.agree(over)


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
