"""RQ-VAE semantic-ID codebook (TIGER, Rajput et al. 2023, arXiv 2305.05065) in one readable file.

An item is described by two parts that may each be missing: a content embedding (MiniLM of its text,
Dc = 384) and the FM's collaborative item embedding (Df = the FM's dim). The model

    x = standardise([content, collab])                     (B, Dc + Df)       mean/std of training items
    x = [x_c * m_c, x_f * m_f, m_c, m_f]                   (B, Dc + Df + 2)   m_* = 1 when the part exists
    z = encoder(x)                                         (B, d)             MLP
    z_q, codes = ResidualVQ(z)                             (B, d), (B, L)     L levels of K codes each
    x_hat = decoder(z_q)                                   (B, Dc + Df)       MLP, loss only on present parts

quantizes the latent with L residual levels (vector-quantize-pytorch's ResidualVQ: k-means initialised,
EMA codebooks, dead codes re-seeded), so an item's codes (c_1, ..., c_L) go from coarse to fine.
Training hides one part of some items (modality dropout) while still asking for both back, so an item
with only text (a cold item: the FM never trained on it) or only a collaborative embedding (no text)
lands where it would have with both. Items whose L codes coincide are told apart by an extra
disambiguation level (a collision index), so every item gets a unique semantic ID of L + 1 numbers.

Code indices of a retrained codebook are an arbitrary permutation of the old ones; `code_perm` (L, K)
maps raw indices to published codes so a retrained codebook can be aligned with its predecessor (remap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from vector_quantize_pytorch import ResidualVQ

from models.hstu import require


@dataclass(frozen=True)
class RQVAEConfig:
    """Architecture of the RQ-VAE; frozen and validated on construction."""

    content_dim: int  # Dc: content embedding size (0 = the catalogue has no text)
    collab_dim: int  # Df: collaborative embedding size (0 = no FM yet)
    latent_dim: int = 32  # d
    hidden: int = 256  # encoder widths hidden, hidden // 2; the decoder mirrors them
    levels: int = 3  # L
    codebook_size: int = 64  # K
    commitment_weight: float = 0.25
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0  # EMA cluster size below which a code is re-seeded from the batch

    def __post_init__(self) -> None:
        name = type(self).__name__
        require(self.content_dim >= 0, name, "content_dim", self.content_dim, "must be >= 0")
        require(self.collab_dim >= 0, name, "collab_dim", self.collab_dim, "must be >= 0")
        require(self.input_dim > 0, name, "content_dim", self.content_dim, "content_dim + collab_dim > 0")
        require(self.latent_dim >= 1, name, "latent_dim", self.latent_dim, "must be >= 1")
        require(self.hidden >= 2, name, "hidden", self.hidden, "must be >= 2")
        require(self.levels >= 1, name, "levels", self.levels, "must be >= 1")
        require(self.codebook_size >= 2, name, "codebook_size", self.codebook_size, "must be >= 2")

    @property
    def input_dim(self) -> int:
        """Dc + Df: the reconstructed features."""
        return self.content_dim + self.collab_dim


@dataclass
class RQVAEOutput:
    """One forward pass."""

    recon: torch.Tensor  # (B, Dc + Df)
    codes: torch.Tensor  # (B, L) published codes
    commit_loss: torch.Tensor  # () summed over levels
    latent: torch.Tensor  # (B, d) before quantization


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> residual vector quantization (L x K) -> decoder MLP."""

    code_perm: torch.Tensor  # (L, K) raw ResidualVQ index -> published code
    feat_mean: torch.Tensor  # (Dc+Df,) standardisation fitted on the training items
    feat_std: torch.Tensor  # (Dc+Df,)

    def __init__(self, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c, h = config, config.hidden
        self.encoder = _mlp([c.input_dim + 2, h, h // 2, c.latent_dim])
        self.rvq = ResidualVQ(
            dim=c.latent_dim,
            num_quantizers=c.levels,
            codebook_size=c.codebook_size,
            kmeans_init=True,
            kmeans_iters=c.kmeans_iters,
            threshold_ema_dead_code=c.dead_code_threshold,
            commitment_weight=c.commitment_weight,
            decay=0.95,
        )
        self.decoder = _mlp([c.latent_dim, h // 2, h, c.input_dim])
        self.register_buffer("code_perm", torch.arange(c.codebook_size).repeat(c.levels, 1))  # (L, K)
        self.register_buffer("feat_mean", torch.zeros(c.input_dim))
        self.register_buffer("feat_std", torch.ones(c.input_dim))

    @torch.no_grad()
    def fit_scaler(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Per-feature mean and std over the items that have the part (so 1.0 = predicting the mean)."""
        present = self.part_mask(mask)  # (N, Dc+Df)
        n = present.sum(0).clamp(min=1)
        mean = (x * present).sum(0) / n
        var = (((x - mean) * present) ** 2).sum(0) / n
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(var.sqrt().clamp(min=1e-6))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Dc+Df) raw features -> standardised features (the space reconstruction is judged in)."""
        return (x - self.feat_mean) / self.feat_std

    def _input(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the missing parts and append the two presence bits: (B, Dc+Df) -> (B, Dc+Df+2)."""
        return torch.cat([x * self.part_mask(mask), mask.float()], dim=1)

    def part_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-feature presence (B, Dc+Df) from the per-part presence (B, 2) = (content, collab)."""
        dc, df = self.config.content_dim, self.config.collab_dim
        m = mask.float()
        return torch.cat([m[:, :1].expand(-1, dc), m[:, 1:].expand(-1, df)], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> RQVAEOutput:
        """Encode, quantize and decode items x (B, Dc+Df) with part presence mask (B, 2)."""
        z = self.encoder(self._input(self.standardise(x), mask))  # (B, d)
        z_q, raw, commit = self.rvq(z)  # (B, d), (B, L), (L,)
        codes = torch.stack([self.code_perm[lvl][raw[:, lvl]] for lvl in range(raw.shape[1])], dim=1)
        return RQVAEOutput(self.decoder(z_q), codes, commit.sum(), z)

    def recon_error(self, out: RQVAEOutput, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-item squared error (B,) in standardised units: the mean over each present part, averaged
        over the present parts (1.0 = no better than predicting the mean item)."""
        dc, sq = self.config.content_dim, (out.recon - self.standardise(x)) ** 2  # (B, Dc+Df)
        parts = [(sq[:, :dc], mask[:, 0]), (sq[:, dc:], mask[:, 1])]
        present = [(p, m.float()) for p, m in parts if p.shape[1] > 0]
        num = torch.stack([p.mean(1) * m for p, m in present]).sum(0)  # (B,)
        den = torch.stack([m for _, m in present]).sum(0)  # (B,)
        return num / den.clamp(min=1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Published codes (N, L) of items, in eval mode (no codebook updates)."""
        was_training = self.training
        self.eval()
        out = [
            self(x[i : i + batch_size], mask[i : i + batch_size]).codes for i in range(0, len(x), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.config.levels, dtype=torch.long)

    @torch.no_grad()
    def item_errors(self, x: torch.Tensor, mask: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Reconstruction error (N,) of items, in eval mode."""
        was_training = self.training
        self.eval()
        errs = []
        for i in range(0, len(x), batch_size):
            xb, mb = x[i : i + batch_size], mask[i : i + batch_size]
            errs.append(self.recon_error(self(xb, mb), xb, mb))
        self.train(was_training)
        return torch.cat(errs) if errs else torch.empty(0)


@dataclass(frozen=True)
class RQVAETrainConfig:
    """Optimisation of the RQ-VAE."""

    epochs: int = 150
    batch_size: int = 256
    lr: float = 1e-3
    modality_dropout: float = 0.3  # share of items (with both parts) shown with one part hidden
    seed: int = 0
    progress: bool = True


def _hide_one_part(mask: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """Input mask (B, 2) with one of the two parts hidden for `share` of the items that have both."""
    both = mask.all(dim=1)  # (B,)
    hide = both & (torch.rand(len(mask), generator=gen) < share)
    which = torch.randint(0, 2, (len(mask),), generator=gen)  # 0: hide content, 1: hide collab
    dropped = mask.clone()
    dropped[hide, which[hide]] = False
    return dropped


def train_rqvae(model: RQVAE, x: torch.Tensor, mask: torch.Tensor, cfg: RQVAETrainConfig) -> list[float]:
    """Train on items x (N, Dc+Df) with presence mask (N, 2); return the mean loss of every epoch.

    The first pass k-means initialises every level's codebook on all items; afterwards each minibatch
    updates the encoder/decoder by Adam and the codebooks by EMA (dead codes are re-seeded).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    model.fit_scaler(x, mask)
    with torch.no_grad():
        model(x, mask)  # k-means initialisation of all levels on the whole catalogue
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    losses: list[float] = []
    bar = tqdm(range(cfg.epochs), desc="rq-vae", disable=not cfg.progress, mininterval=5.0, leave=False)
    for _ in bar:
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb, mb = x[idx], mask[idx]
            out = model(xb, _hide_one_part(mb, cfg.modality_dropout, gen))
            loss = model.recon_error(out, xb, mb).mean() + out.commit_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(len(x), 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    model.eval()
    return losses


# ---- semantic IDs ---------------------------------------------------------------------------------------


def collision_index(codes: np.ndarray, taken: np.ndarray | None = None) -> np.ndarray:
    """Disambiguation level (N,) for codes (N, L): 0, 1, 2, ... among items with the same L codes.

    Rows are numbered in the given order (callers order items by arrival), after the `taken` rows
    (M, L+1) of items that already hold an ID, so existing IDs never change and new items get the next
    free index of their tuple.
    """
    start: dict[tuple[int, ...], int] = {}
    if taken is not None:
        for row in taken:
            key = tuple(int(v) for v in row[:-1])
            start[key] = max(start.get(key, 0), int(row[-1]) + 1)
    out = np.empty(len(codes), dtype=np.int64)
    for i, row in enumerate(codes):
        key = tuple(int(v) for v in row)
        out[i] = start.get(key, 0)
        start[key] = out[i] + 1
    return out


def semantic_ids(codes: np.ndarray, taken: np.ndarray | None = None) -> np.ndarray:
    """Unique semantic IDs (N, L+1): the L codes plus the collision index."""
    return np.concatenate([codes, collision_index(codes, taken)[:, None]], axis=1).astype(np.int64)


def align_codes(old: np.ndarray, new: np.ndarray, codebook_size: int) -> np.ndarray:
    """Per level, the permutation (L, K) of new code indices that best matches old ones on shared items.

    Retraining numbers clusters arbitrarily; matching new code j to the old code most of its items had
    (a maximum-weight assignment per level) keeps IDs stable where the clusters are the same.
    """
    from scipy.optimize import linear_sum_assignment

    perms = []
    for lvl in range(new.shape[1]):
        overlap = np.zeros((codebook_size, codebook_size))  # (new, old)
        np.add.at(overlap, (new[:, lvl], old[:, lvl]), 1.0)
        rows, cols = linear_sum_assignment(-overlap)
        perm = np.empty(codebook_size, dtype=np.int64)
        perm[rows] = cols
        perms.append(perm)
    return np.stack(perms)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a histogram."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def max_entropy_bits(codebook_size: int) -> float:
    """The entropy of a uniform use of all codes."""
    return math.log2(codebook_size)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (zero rows stay zero)."""
    return F.normalize(x, dim=-1)
