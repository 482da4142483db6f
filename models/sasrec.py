"""SASRec baseline (Kang & McAuley 2018): causal softmax self-attention over a user's item sequence.

Pre-LayerNorm Transformer blocks with learned positions counted back from the most recent event (so
left padding of any length leaves them unchanged), the input item table shared as the output table, and
the same `user_state` / `item_embeddings` outputs as the HSTU model, so one training loop serves both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.hstu import ItemEmbedding, require


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture of the SASRec baseline; frozen and validated on construction."""

    n_items: int  # items are 1..n_items, 0 is padding
    max_len: int = 50  # longest history window; one learned position per slot
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.3
    n_code_levels: int = 0  # semantic-ID levels added to the item embedding; 0 = no codes
    codebook_size: int = 0
    l2_norm: bool = False  # SASRec scores by plain dot product
    temperature: float = 1.0  # logit scale 1/temperature when l2_norm, ignored otherwise

    def __post_init__(self) -> None:
        name = type(self).__name__
        require(self.n_items >= 1, name, "n_items", self.n_items, "must be >= 1")
        require(self.max_len >= 1, name, "max_len", self.max_len, "must be >= 1")
        require(self.dim >= 1, name, "dim", self.dim, "must be >= 1")
        require(self.n_layers >= 1, name, "n_layers", self.n_layers, "must be >= 1")
        require(
            self.n_heads >= 1 and self.dim % self.n_heads == 0,
            name,
            "n_heads",
            self.n_heads,
            f"must be >= 1 and divide dim={self.dim}",
        )
        require(0.0 <= self.dropout < 1.0, name, "dropout", self.dropout, "must be in [0, 1)")
        require(self.n_code_levels >= 0, name, "n_code_levels", self.n_code_levels, "must be >= 0")
        require(
            self.n_code_levels == 0 or self.codebook_size >= 1,
            name,
            "codebook_size",
            self.codebook_size,
            "must be >= 1 when n_code_levels > 0",
        )
        require(self.temperature > 0, name, "temperature", self.temperature, "must be > 0")


class SASRecBlock(nn.Module):
    """Pre-LN block: causal multi-head softmax attention, then a point-wise feed-forward network."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        d = config.dim
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.ln_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), boolean attention mask (B, 1, T, T) -> (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=-1)  # 3 x (B, T, D)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, dh)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    """SASRec sequential recommender with the HSTU model's retrieval interface."""

    model_type = "sasrec"

    def __init__(self, config: SASRecConfig, codes: torch.Tensor | None = None) -> None:
        super().__init__()
        if (codes is None) != (config.n_code_levels == 0):
            raise ValueError(
                f"SASRecConfig.n_code_levels={config.n_code_levels} but codes "
                f"{'missing' if codes is None else 'given'}: pass codes iff n_code_levels > 0"
            )
        self.config = config
        self.item_emb = ItemEmbedding(config.n_items, config.dim, codes, config.codebook_size)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.emb_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim)

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Causal encoding of left-padded histories (B, T) -> output vectors (B, T, D); timestamps unused."""
        t = items.shape[1]
        if t > self.config.max_len:
            items = items[:, -self.config.max_len :]
            t = self.config.max_len
        back = torch.arange(t - 1, -1, -1, device=items.device)  # (T,) distance from the latest event
        x = self.item_emb(items) * math.sqrt(self.config.dim) + self.pos_emb(back)  # (B, T, D)
        x = self.emb_drop(x) * (items != 0).unsqueeze(-1)
        eye = torch.eye(t, dtype=torch.bool, device=items.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        mask = (causal & ((items != 0).unsqueeze(1) | eye)).unsqueeze(1)  # (B, 1, T, T), no empty rows
        for block in self.blocks:
            x = block(x, mask)
        h = self.ln_f(x)
        return F.normalize(h, dim=-1) if self.config.l2_norm else h

    def user_state(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Retrieval query: output at the most recent position of left-padded histories, (B, D)."""
        return self(items, timestamps)[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        """Output item table (n_items+1, D), shared with the input table."""
        table = self.item_emb.table()
        return F.normalize(table, dim=-1) if self.config.l2_norm else table

    def logit_scale(self) -> float:
        """Multiplier turning user-item dot products into logits."""
        return 1.0 / self.config.temperature if self.config.l2_norm else 1.0
