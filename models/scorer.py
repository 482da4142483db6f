"""The thin online scorer: the only model on the request path (the AIF "interaction step").

For a user and C retrieved candidates it combines what was computed ahead of time:
  u  (D,)     the FM user state (nearline, from `user_state`)
  e  (C, D)   the candidates' FM item embeddings (nearline, from `item_repr`)
  p  (C, D)   the FM pair representation where speculation precomputed it, else a learned miss vector
  s  (C, F)   item statistics (counts, trend, rating) from `item_stats`
and scores each candidate with a small MLP on top of a base score. It is trained by distillation: match
the FM's pair scores (the expensive teacher) over the candidates, plus cross-entropy on the item that was
really chosen.

The base (`ScorerConfig.base`): `dot` is u.e for every candidate (the retrieval score; the first scorers);
`fm` is the FM's own logit, scale * p.e on a speculative hit (the FM pair score itself, bit for bit when p
is the FM's pair vector) and scale * u.e on a miss (the FM's retrieval logit, same units), so a hit starts
from the full FM's score and the MLP only learns corrections, and hits and misses stay comparable
inside one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_STATS = 5  # log1p(count_1c), log1p(count_7c), trend, mean_rating (0 when unknown), has_rating
BASES = ("dot", "fm")


@dataclass(frozen=True)
class ScorerConfig:
    """Size of the thin scorer; frozen and validated."""

    dim: int  # D of the FM vectors it reads
    hidden: int = 64
    dropout: float = 0.1
    base: str = "dot"  # dot: u.e | fm: the FM's logit, scale * (p.e on hits, u.e on misses)
    scale: float = 1.0  # the FM's logit scale (1/temperature of an L2-normalised FM); used by base fm

    def __post_init__(self) -> None:
        for name, value in (("dim", self.dim), ("hidden", self.hidden)):
            if value < 1:
                raise ValueError(f"ScorerConfig.{name}={value!r} is invalid: must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ScorerConfig.dropout={self.dropout!r} is invalid: must be in [0, 1)")
        if self.base not in BASES:
            raise ValueError(f"ScorerConfig.base={self.base!r} is invalid: must be one of {BASES}")
        if not self.scale > 0:
            raise ValueError(f"ScorerConfig.scale={self.scale!r} is invalid: must be > 0")


class ThinScorer(nn.Module):
    """score(u, e, p | miss, s) = MLP([u*e, p*e, u.e, p.e, hit, s]) + base (u.e, or the FM's logit)."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.miss = nn.Parameter(torch.zeros(d))  # stands in for p where speculation missed
        self.mlp = nn.Sequential(
            nn.Linear(2 * d + 3 + N_STATS, config.hidden),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )

    def forward(
        self, u: torch.Tensor, e: torch.Tensor, p: torch.Tensor, hit: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, C) from u (B, D), e (B, C, D), p (B, C, D), hit (B, C) in {0,1}, s (B, C, F)."""
        hit_ = hit.unsqueeze(-1)  # (B, C, 1)
        p = hit_ * p + (1 - hit_) * self.miss  # (B, C, D)
        ue = u.unsqueeze(1) * e  # (B, C, D)
        pe = p * e
        ue_sum, pe_sum = ue.sum(-1), pe.sum(-1)  # (B, C)
        x = torch.cat([ue, pe, ue_sum.unsqueeze(-1), pe_sum.unsqueeze(-1), hit_, s], dim=-1)
        if self.config.base == "dot":
            base = ue_sum  # residual on the retrieval score: starts as the FM dot
        else:
            base = self.config.scale * (hit * pe_sum + (1 - hit) * ue_sum)  # starts as the FM's own logit
        return self.mlp(x).squeeze(-1) + base


class NumpyScorer:
    """ThinScorer's forward pass for one user in NumPy: the request path's copy of the weights.

    A request scores one user's C candidates; torch's per-operator dispatch costs more than the
    arithmetic at that size, so the served path runs the same algebra on NumPy arrays. It agrees with
    `ThinScorer.forward` to float32 rounding (tests/unit/test_scorer_model.py).
    """

    def __init__(self, model: ThinScorer) -> None:
        d = model.config.dim
        first, last = model.mlp[0], model.mlp[3]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        w1 = first.weight.detach().numpy().astype(np.float32)  # (H, 2D+3+F)
        self.w_ue = np.ascontiguousarray(w1[:, :d].T)  # (D, H)
        self.w_pe = np.ascontiguousarray(w1[:, d : 2 * d].T)  # (D, H)
        self.w_rest = np.ascontiguousarray(w1[:, 2 * d :].T)  # (3+F, H): ue.sum, pe.sum, hit, stats
        self.b1 = first.bias.detach().numpy().astype(np.float32)  # (H,)
        self.w2 = last.weight.detach().numpy().astype(np.float32)[0]  # (H,)
        self.b2 = float(last.bias.detach()[0])
        self.miss = model.miss.detach().numpy().astype(np.float32)  # (D,)
        self.base = model.config.base
        self.scale = np.float32(model.config.scale)

    def __call__(
        self, u: np.ndarray, e: np.ndarray, p: np.ndarray | None, hit: np.ndarray, s: np.ndarray
    ) -> np.ndarray:
        """Scores (C,) from u (D,), e (C, D), p (C, D) or None (all misses), hit (C,) in {0,1}, s (C, F)."""
        ue = e * u  # (C, D)
        if p is None:
            pe = e * self.miss  # (C, D)
        else:
            h = hit[:, None]
            pe = (h * p + (1 - h) * self.miss) * e  # (C, D)
        ue_sum, pe_sum = ue.sum(-1), pe.sum(-1)  # (C,)
        x = ue @ self.w_ue + pe @ self.w_pe + self.b1  # (C, H)
        x += np.column_stack([ue_sum, pe_sum, hit, s]) @ self.w_rest
        x *= 1.0 / (1.0 + np.exp(-x))  # SiLU
        if self.base == "dot":
            return x @ self.w2 + self.b2 + ue_sum
        base = ue_sum if p is None else hit * pe_sum + (1 - hit) * ue_sum
        return x @ self.w2 + self.b2 + self.scale * base


def stats_features(
    count_1c: np.ndarray, count_7c: np.ndarray, trend: np.ndarray, mean_rating: np.ndarray
) -> np.ndarray:
    """(N, F) float32 item statistics as the scorer reads them (NaN ratings become 0 plus a flag)."""
    has = ~np.isnan(mean_rating)
    return np.stack(
        [
            np.log1p(count_1c),
            np.log1p(count_7c),
            trend,
            np.where(has, mean_rating / 5.0, 0.0),
            has.astype(np.float64),
        ],
        axis=1,
    ).astype(np.float32)


@dataclass
class DistillBatch:
    """Training examples: one user and C candidates each; `label` is the chosen candidate's column."""

    u: torch.Tensor  # (N, D)
    e: torch.Tensor  # (N, C, D)
    p: torch.Tensor  # (N, C, D) FM pair vectors for every candidate (the teacher saw them all)
    teacher: torch.Tensor  # (N, C) FM pair scores
    s: torch.Tensor  # (N, C, F)
    label: torch.Tensor  # (N,) int64, -1 when the chosen item was not among the candidates


def distill(
    model: ThinScorer,
    data: DistillBatch,
    epochs: int = 30,
    lr: float = 3e-3,
    hit_rate: float = 0.5,
    temperature: float = 1.0,
    label_weight: float = 0.5,
    seed: int = 0,
    batch: int = 256,
) -> list[float]:
    """Train by distillation; speculation hits are simulated at `hit_rate` so both paths are learned.

    Returns the training loss after each epoch, measured on all of `data` with one simulated hit mask
    drawn once (the masks of the training steps are drawn anew each step, and with the `fm` base the loss
    depends on which candidates are hits much more than on one step's learning)."""
    gen = torch.Generator().manual_seed(seed)
    probe = (
        torch.rand(data.e.shape[:2], generator=torch.Generator().manual_seed(seed + 1)) < hit_rate
    ).float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.label), generator=gen)
        for lo in range(0, len(order), batch):
            idx = order[lo : lo + batch]
            hit = (torch.rand(len(idx), data.e.shape[1], generator=gen) < hit_rate).float()  # (b, C)
            loss = _distill_loss(model, data, idx, hit, temperature, label_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            total = 0.0
            for lo in range(0, len(data.label), batch):
                idx = torch.arange(lo, min(lo + batch, len(data.label)))
                total += float(_distill_loss(model, data, idx, probe[idx], temperature, label_weight)) * len(
                    idx
                )
        losses.append(total / max(len(data.label), 1))
    model.eval()
    return losses


def _distill_loss(
    model: ThinScorer,
    data: DistillBatch,
    idx: torch.Tensor,
    hit: torch.Tensor,
    temperature: float,
    label_weight: float,
) -> torch.Tensor:
    """KL to the teacher's softmax plus label_weight x cross-entropy on the chosen item, for examples idx."""
    logits = model(data.u[idx], data.e[idx], data.p[idx], hit, data.s[idx])  # (b, C)
    soft = F.softmax(data.teacher[idx] / temperature, dim=-1)
    loss = F.kl_div(F.log_softmax(logits / temperature, -1), soft, reduction="batchmean")
    chosen = data.label[idx] >= 0  # examples whose chosen item was retrieved
    if chosen.any():  # (a batch with none would make the mean cross-entropy NaN)
        loss = loss + label_weight * F.cross_entropy(logits[chosen], data.label[idx][chosen])
    return loss
