"""Codebook health: per-level utilisation and entropy, collisions, stability, and drift of new items.

- utilisation of level l: distinct codes used at l / K. The hourglass effect (Kuai et al. 2024) shows as
  intermediate levels using few codes while the first and last use many.
- entropy of level l: Shannon entropy (bits) of the code distribution at l; log2(K) is uniform use.
- collision rate: the share of items whose L codes are not unique, i.e. 1 - distinct L-tuples / items
  (the items that need a disambiguation index above 0).
- stability against a previous version: the share of shared items whose first p codes changed.
- drift of new items: their utilisation and entropy against what the same number of items drawn from
  the reference code distribution would give (so a small batch is not mistaken for collapse), and
  their reconstruction error against the reference items'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.codebook import entropy_bits
from specrec.config import CodebookDriftConfig


def level_counts(codes: np.ndarray, codebook_size: int) -> list[np.ndarray]:
    """Per level, the histogram (K,) of codes (N, L)."""
    return [np.bincount(codes[:, lvl], minlength=codebook_size) for lvl in range(codes.shape[1])]


def utilisation(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, the share of the K codes used by at least one item."""
    return [float((c > 0).sum() / codebook_size) for c in level_counts(codes, codebook_size)]


def entropy(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, the entropy (bits) of the code distribution."""
    return [entropy_bits(c) for c in level_counts(codes, codebook_size)]


def collision_rate(codes: np.ndarray) -> float:
    """1 - distinct L-code tuples / items: the share of items needing a collision index above 0."""
    if len(codes) == 0:
        return 0.0
    return float(1.0 - len(np.unique(codes, axis=0)) / len(codes))


def prefix_changed(old: np.ndarray, new: np.ndarray, depth: int) -> float:
    """Share of items (rows aligned) whose first `depth` codes differ between two versions."""
    if len(old) == 0:
        return 0.0
    return float((old[:, :depth] != new[:, :depth]).any(axis=1).mean())


@dataclass(frozen=True)
class Health:
    """The health of one set of codes."""

    items: int
    utilisation_per_level: list[float]
    entropy_per_level: list[float]
    collision_rate: float
    recon_error: float

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat MLflow metrics (level numbers from 1)."""
        out = {f"{prefix}items": float(self.items), f"{prefix}collision_rate": self.collision_rate}
        out[f"{prefix}recon_error"] = self.recon_error
        for lvl, (u, h) in enumerate(zip(self.utilisation_per_level, self.entropy_per_level, strict=True), 1):
            out[f"{prefix}utilisation_l{lvl}"] = u
            out[f"{prefix}entropy_l{lvl}"] = h
        return out


def health(codes: np.ndarray, errors: np.ndarray, codebook_size: int) -> Health:
    """Health of codes (N, L) with per-item reconstruction errors (N,)."""
    return Health(
        len(codes),
        utilisation(codes, codebook_size),
        entropy(codes, codebook_size),
        collision_rate(codes),
        float(errors.mean()) if len(errors) else 0.0,
    )


def expected_distinct(p: np.ndarray, n: int) -> float:
    """Expected number of distinct codes among n draws from distribution p (K,)."""
    return float((1.0 - (1.0 - p) ** n).sum())


def expected_entropy(p: np.ndarray, n: int, draws: int = 64, seed: int = 0) -> float:
    """Expected plug-in entropy (bits) of n draws from p (Monte Carlo, seeded)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([entropy_bits(rng.multinomial(n, p)) for _ in range(draws)]))


@dataclass(frozen=True)
class Drift:
    """New items against the reference the codebook was trained on, and whether to retrain."""

    new_items: int
    reference_items: int
    recon_ratio: float
    utilisation_ratio_per_level: list[float]
    entropy_ratio_per_level: list[float]
    new_share: float
    fm_changed: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def retrain(self) -> bool:
        """Whether a threshold was crossed."""
        return bool(self.reasons)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics."""
        out = {
            "drift_new_items": float(self.new_items),
            "drift_recon_ratio": self.recon_ratio,
            "drift_new_share": self.new_share,
            "drift_fm_changed": float(self.fm_changed),
            "drift_retrain": float(self.retrain),
        }
        for lvl, (u, h) in enumerate(
            zip(self.utilisation_ratio_per_level, self.entropy_ratio_per_level, strict=True), 1
        ):
            out[f"drift_utilisation_ratio_l{lvl}"] = u
            out[f"drift_entropy_ratio_l{lvl}"] = h
        return out


def drift(
    ref_codes: np.ndarray,
    ref_errors: np.ndarray,
    new_codes: np.ndarray,
    new_errors: np.ndarray,
    codebook_size: int,
    cfg: CodebookDriftConfig,
    fm_changed: bool = False,
) -> Drift:
    """Compare new items' codes and errors with the reference; list every threshold they cross."""
    n, levels = len(new_codes), ref_codes.shape[1]
    util_ratio, ent_ratio = [1.0] * levels, [1.0] * levels
    recon_ratio = 1.0
    if n:
        recon_ratio = float(new_errors.mean() / max(float(ref_errors.mean()), 1e-12))
        for lvl, (ref_c, new_c) in enumerate(
            zip(level_counts(ref_codes, codebook_size), level_counts(new_codes, codebook_size), strict=True)
        ):
            p = ref_c / max(ref_c.sum(), 1)
            util_ratio[lvl] = float((new_c > 0).sum() / max(expected_distinct(p, n), 1e-12))
            ent_ratio[lvl] = float(entropy_bits(new_c) / max(expected_entropy(p, n, seed=lvl), 1e-12))
    share = n / max(len(ref_codes), 1)
    reasons = []
    if n >= cfg.min_items:
        if recon_ratio > cfg.max_recon_ratio:
            reasons.append(f"recon_ratio {recon_ratio:.3f} > {cfg.max_recon_ratio}")
        if min(util_ratio) < cfg.min_utilisation_ratio:
            reasons.append(f"utilisation_ratio {min(util_ratio):.3f} < {cfg.min_utilisation_ratio}")
        if min(ent_ratio) < cfg.min_entropy_ratio:
            reasons.append(f"entropy_ratio {min(ent_ratio):.3f} < {cfg.min_entropy_ratio}")
    if share > cfg.max_new_share:
        reasons.append(f"new_share {share:.3f} > {cfg.max_new_share}")
    if fm_changed and cfg.retrain_on_fm_change:
        reasons.append("the FM champion changed")
    return Drift(n, len(ref_codes), recon_ratio, util_ratio, ent_ratio, share, fm_changed, reasons)
