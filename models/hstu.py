"""HSTU-style sequential transducer: the foundation model (Zhai et al. 2024, arXiv 2402.17152).

One layer, for the (B, T, D) input x of a user's time-ordered events:

    U, V, Q, K = split(SiLU(f1(LayerNorm(x))))
    A = SiLU(Q K^T / sqrt(d_head) + rab_pos(i - j) + rab_time(t_i - t_j)) * mask / max_len
    x = x + Dropout(f2(LayerNorm(A V) * U))

Pointwise SiLU attention has no softmax, so a key's weight does not depend on the other keys; dividing by
the constant max_len (not the padded length) keeps outputs independent of padding, which is what makes
incremental encoding with a KV cache exact. Three outputs feed the platform: `user_state` (retrieval
query), `item_embeddings` (nearline item table / ANN index) and `pair_repr` (target-aware scoring of
candidates appended after the history, M-FALCON style: a candidate sees the history and itself only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# HSTU's time bucketing: bucket = floor(ln(max(|dt|, 1)) / 0.301); 1e9 seconds lands in bucket 68.
TIME_BUCKET_DIVISOR = 0.301


def require(ok: bool, owner: str, field: str, value: object, rule: str) -> None:
    """Raise ValueError naming the field, its value and the rule it broke."""
    if not ok:
        raise ValueError(f"{owner}.{field}={value!r} is invalid: {rule}")


@dataclass(frozen=True)
class HSTUConfig:
    """Architecture of the HSTU foundation model; frozen and validated on construction."""

    n_items: int  # items are 1..n_items, 0 is padding
    max_len: int = 50  # training window; attention is normalised by it and relative positions clip at it
    dim: int = 64  # embedding / hidden size D
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.3
    n_code_levels: int = 0  # L semantic-ID levels added to the item embedding; 0 = no codes
    codebook_size: int = 0  # K values per level (codes are in [0, K))
    time_buckets: int = 64  # log-time-gap buckets of the relative time bias
    l2_norm: bool = True  # score with L2-normalised user and item vectors (cosine / temperature)
    temperature: float = 0.05  # logit scale 1/temperature when l2_norm, ignored otherwise
    # pair vector = user state + g * candidate output with a learned scalar g that starts at 0, so the pair
    # score starts as the retrieval score and the target-aware part enters only as far as it helps;
    # False: g = 1 (the candidate output, unit-norm when l2_norm, always weighs as much as the state)
    pair_gate: bool = False

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
        require(self.time_buckets >= 1, name, "time_buckets", self.time_buckets, "must be >= 1")
        require(self.temperature > 0, name, "temperature", self.temperature, "must be > 0")


class ItemEmbedding(nn.Module):
    """Item-id embedding plus the sum over levels of the item's semantic-code embeddings."""

    codes: torch.Tensor  # (n_items+1, L) buffer, only when codes are given
    code_offsets: torch.Tensor  # (L,) buffer: level l's codes index rows l*K .. l*K+K-1 of code_emb

    def __init__(self, n_items: int, dim: int, codes: torch.Tensor | None, codebook_size: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)
        self.code_emb: nn.Embedding | None = None
        if codes is not None:
            _check_codes(codes, n_items, codebook_size)
            levels = codes.shape[1]
            self.register_buffer("codes", codes.long().clone())  # (n_items+1, L)
            self.register_buffer("code_offsets", torch.arange(levels) * codebook_size)  # (L,)
            self.code_emb = nn.Embedding(levels * codebook_size, dim)
            nn.init.normal_(self.code_emb.weight, std=0.02)
        with torch.no_grad():
            self.ids.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Embed item indices of any shape (...) to (..., D); padding (0) embeds to zeros."""
        e = self.ids(items)  # (..., D)
        if self.code_emb is not None:
            code_rows = self.codes[items] + self.code_offsets  # (..., L)
            e = e + self.code_emb(code_rows).sum(-2) * (items != 0).unsqueeze(-1)
        return e

    def table(self) -> torch.Tensor:
        """All item embeddings, (n_items+1, D), row 0 = padding."""
        return self(torch.arange(self.n_items + 1, device=self.ids.weight.device))


def _check_codes(codes: torch.Tensor, n_items: int, codebook_size: int) -> None:
    """Reject semantic codes whose shape or range does not fit the configured catalogue."""
    if codes.dim() != 2 or codes.shape[0] != n_items + 1:
        raise ValueError(f"codes must have shape (n_items+1={n_items + 1}, L), got {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"codes must be in [0, codebook_size={codebook_size}), got "
            f"[{int(codes.min())}, {int(codes.max())}]"
        )


def time_bucket(dt: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket signed time gaps (seconds) by log magnitude into [0, n_buckets]."""
    b = torch.log(dt.abs().clamp(min=1).double()) / TIME_BUCKET_DIVISOR
    return b.long().clamp(0, n_buckets)


@dataclass
class KVCache:
    """A user's encoded events: per-layer keys/values so new events attend without re-encoding old ones.

    Old events' outputs never change (attention is causal), so their U gates are not needed again;
    new queries need every cached key's timestamp for the time bias, so all timestamps are kept.
    """

    keys: list[torch.Tensor]  # per layer (B, H, T, d_head)
    values: list[torch.Tensor]  # per layer (B, H, T, d_head)
    timestamps: torch.Tensor  # (B, T) unix seconds of the cached events
    valid: torch.Tensor  # (B, T) bool, False on left padding
    last_hidden: torch.Tensor  # (B, D) output at the most recent event (the user state)

    @property
    def length(self) -> int:
        """Number of cached positions (including left padding)."""
        return int(self.timestamps.shape[1])


class HSTULayer(nn.Module):
    """One HSTU block: fused U/V/Q/K projection, pointwise SiLU attention, gated output, residual."""

    def __init__(self, config: HSTUConfig) -> None:
        super().__init__()
        d = config.dim
        self.n_heads, self.max_len = config.n_heads, config.max_len
        self.ln_in = nn.LayerNorm(d)
        self.f1 = nn.Linear(d, 4 * d)
        self.ln_attn = nn.LayerNorm(d)
        self.f2 = nn.Linear(d, d)
        self.drop_out = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, d_head)."""
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update x (B, Tq, D) given bias/mask (B, Tq, Tk); keys = past keys, then x's. Returns x, K, V."""
        b, tq, d = x.shape
        u, v, q, k = F.silu(self.f1(self.ln_in(x))).split(d, dim=-1)  # 4 x (B, Tq, D)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, H, Tq, dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, Tk, dh)
        att = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]) + bias.unsqueeze(1)  # (B, H, Tq, Tk)
        att = F.silu(att) * mask.unsqueeze(1) / self.max_len
        # Dropout acts on the layer output (as in HSTU); on the (B, H, Tq, Tk) weights it cost ~10% of a step.
        y = (att @ v).transpose(1, 2).reshape(b, tq, d)  # (B, Tq, D)
        y = self.f2(self.ln_attn(y) * u)
        return x + self.drop_out(y), k, v


class HSTU(nn.Module):
    """HSTU foundation model: user state, item table and target-aware pair scores."""

    model_type = "hstu"

    def __init__(self, config: HSTUConfig, codes: torch.Tensor | None = None) -> None:
        super().__init__()
        if (codes is None) != (config.n_code_levels == 0):
            raise ValueError(
                f"HSTUConfig.n_code_levels={config.n_code_levels} but codes "
                f"{'missing' if codes is None else 'given'}: pass codes iff n_code_levels > 0"
            )
        if codes is not None and codes.shape[1] != config.n_code_levels:
            raise ValueError(f"codes have {codes.shape[1]} levels, config says {config.n_code_levels}")
        self.config = config
        self.item_emb = ItemEmbedding(config.n_items, config.dim, codes, config.codebook_size)
        self.emb_drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(HSTULayer(config) for _ in range(config.n_layers))
        self.pos_bias = nn.Parameter(torch.zeros(config.n_layers, config.max_len + 1))
        self.time_bias = nn.Parameter(torch.zeros(config.n_layers, config.time_buckets + 1))
        self.candidate_marker = nn.Parameter(torch.zeros(config.dim))  # tells candidates from history events
        if config.pair_gate:
            self.pair_gate = nn.Parameter(torch.zeros(()))  # the candidate output's weight in the pair vector
        self.ln_f = nn.LayerNorm(config.dim)

    # ---- core -------------------------------------------------------------------------------------------

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, D), scaled by sqrt(D) as in SASRec/HSTU."""
        return self.emb_drop(self.item_emb(items) * math.sqrt(self.config.dim))

    def _output(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm, then L2-normalise when scoring is by cosine."""
        h = self.ln_f(h)
        return F.normalize(h, dim=-1) if self.config.l2_norm else h

    def _layers(
        self,
        x: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        q_ts: torch.Tensor,
        k_ts: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run all layers for queries x (B, Tq, D) over keys = cached events + x; return x, per-layer K, V."""
        cfg = self.config
        pos_idx = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).clamp(0, cfg.max_len)  # (B|1, Tq, Tk)
        time_idx = time_bucket(q_ts.unsqueeze(-1) - k_ts.unsqueeze(-2), cfg.time_buckets)  # (B, Tq, Tk)
        kvs = []
        for i, layer in enumerate(self.layers):
            bias = self.pos_bias[i][pos_idx] + self.time_bias[i][time_idx]  # (B, Tq, Tk)
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, k, v = layer(x, bias, mask, past)
            kvs.append((k, v))
        return x, kvs

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Causal encoding of left-padded histories (B, T) -> output vectors (B, T, D)."""
        h, _ = self._encode_full(items, timestamps)
        return self._output(h)

    def _encode_full(
        self, items: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Hidden states (B, T, D) before the output norm, and per-layer K, V."""
        t = items.shape[1]
        pos = torch.arange(t, device=items.device).unsqueeze(0)  # (1, T)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()  # (T, T)
        mask = (causal & (items != 0).unsqueeze(1)).float()  # (B, T, T)
        return self._layers(self._embed(items), pos, pos, timestamps, timestamps, mask)

    # ---- the three outputs ------------------------------------------------------------------------------

    def user_state(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Retrieval query: output at the last (most recent) position of left-padded histories, (B, D)."""
        return self(items, timestamps)[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        """Output item table (n_items+1, D) for the ANN index; L2-normalised when config.l2_norm."""
        table = self.item_emb.table()
        return F.normalize(table, dim=-1) if self.config.l2_norm else table

    def logit_scale(self) -> float:
        """Multiplier turning user-item dot products into logits (1/temperature for cosine scoring)."""
        return 1.0 / self.config.temperature if self.config.l2_norm else 1.0

    def pair_repr(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor,
        candidates: torch.Tensor,
        candidate_ts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-aware (vector (B, C, D), score (B, C)) for candidates (B, C) given histories (B, T)."""
        _, h_cand = self.encode_with_candidates(items, timestamps, candidates, candidate_ts)
        return h_cand, self.pair_score(h_cand, candidates)

    def pair_score(self, h_cand: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Score (B, C) of candidate vectors (B, C, D) against their own item embeddings."""
        e = self.item_emb(candidates)  # (B, C, D)
        e = F.normalize(e, dim=-1) if self.config.l2_norm else e
        return (h_cand * e).sum(-1) * self.logit_scale()

    def encode_with_candidates(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor,
        candidates: torch.Tensor,
        candidate_ts: torch.Tensor | None = None,
        cuts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over [history | candidates]: history outputs (B, T, D) and candidate outputs (B, C, D).

        History is causal and never sees candidates; each candidate sees the valid history and itself,
        sits at relative position T (the next slot) and defaults to the last history timestamp. A candidate's
        vector is the user state plus the candidate token's output, so the pair score starts from the
        decomposable retrieval score and learns the target-aware interaction on top.

        `cuts` (B, C), for training: candidate j of row b sees only the history up to position cuts[b, j]
        (its user state is the output there), as if the request came right after that event, so one pass
        trains the pair head at several points of each history.
        """
        t = items.shape[1]
        h = self._with_candidates(items, timestamps, candidates, candidate_ts, cuts)  # (B, T+C, D)
        if cuts is None:
            state = h[:, t - 1 : t]  # (B, 1, D)
        else:
            state = h[:, :t].gather(1, cuts.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, C, D)
        # The candidate's own output is a target-aware correction to the user state it builds on.
        own = h[:, t:] * self.pair_gate if self.config.pair_gate else h[:, t:]
        pair = state + own  # (B, C, D)
        return h[:, :t], F.normalize(pair, dim=-1) if self.config.l2_norm else pair

    def candidate_outputs(
        self, items: torch.Tensor, timestamps: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user state (B, D) and each candidate token's own output (B, C, D), from one M-FALCON pass:
        the parts `encode_with_candidates` adds into the pair vector, for heads built on them."""
        t = items.shape[1]
        h = self._with_candidates(items, timestamps, candidates, None, None)
        return h[:, t - 1], h[:, t:]

    def _with_candidates(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor,
        candidates: torch.Tensor,
        candidate_ts: torch.Tensor | None,
        cuts: torch.Tensor | None,
    ) -> torch.Tensor:
        """Outputs (B, T+C, D) of one pass over [history | candidates] (see encode_with_candidates)."""
        b, t = items.shape
        c = candidates.shape[1]
        dev = items.device
        if cuts is None:
            if candidate_ts is None:
                candidate_ts = timestamps[:, -1:].expand(b, c)
            pos = torch.cat([torch.arange(t, device=dev), torch.full((c,), t, device=dev)]).unsqueeze(0)
        else:
            if candidate_ts is None:
                candidate_ts = timestamps.gather(1, cuts)
            pos = torch.cat([torch.arange(t, device=dev).expand(b, t), cuts + 1], dim=1)  # (B, T+C)
        ts = torch.cat([timestamps, candidate_ts], dim=1)  # (B, T+C)
        x = torch.cat([self._embed(items), self._embed(candidates) + self.candidate_marker], dim=1)
        h, _ = self._layers(x, pos, pos, ts, ts, _falcon_mask(items, c, cuts))
        return self._output(h)

    # ---- incremental encoding for returning users -------------------------------------------------------

    @torch.no_grad()
    def encode(self, items: torch.Tensor, timestamps: torch.Tensor) -> KVCache:
        """Encode left-padded histories (B, T) into a KV cache; cache.last_hidden is the user state."""
        h, kvs = self._encode_full(items, timestamps)
        return KVCache(
            [k for k, _ in kvs], [v for _, v in kvs], timestamps.clone(), items != 0, self._output(h[:, -1])
        )

    @torch.no_grad()
    def extend(self, cache: KVCache, items: torch.Tensor, timestamps: torch.Tensor) -> KVCache:
        """Append new events (B, Tn) (no padding) to a cache at O(Tn x history) cost."""
        if bool((items == 0).any()):
            raise ValueError("extend: new events must not contain padding (item 0); extend row by row")
        tn, t0 = items.shape[1], cache.length
        dev = items.device
        q_pos = torch.arange(t0, t0 + tn, device=dev).unsqueeze(0)  # (1, Tn)
        k_pos = torch.arange(t0 + tn, device=dev).unsqueeze(0)  # (1, T0+Tn)
        k_ts = torch.cat([cache.timestamps, timestamps], dim=1)  # (B, T0+Tn)
        new_causal = torch.ones(tn, tn, dtype=torch.bool, device=dev).tril().expand(items.shape[0], tn, tn)
        mask = torch.cat([cache.valid.unsqueeze(1).expand(-1, tn, -1), new_causal], dim=2).float()
        h, kvs = self._layers(self._embed(items), q_pos, k_pos, timestamps, k_ts, mask, cache)
        valid = torch.cat([cache.valid, torch.ones_like(items, dtype=torch.bool)], dim=1)
        return KVCache([k for k, _ in kvs], [v for _, v in kvs], k_ts, valid, self._output(h[:, -1]))


def _falcon_mask(items: torch.Tensor, n_candidates: int, cuts: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T+C, T+C) float mask: causal over valid history; candidates see valid history (up to their cut,
    when `cuts` (B, C) is given) and themselves."""
    b, t = items.shape
    c, dev = n_candidates, items.device
    valid = items != 0  # (B, T)
    hist = torch.ones(t, t, dtype=torch.bool, device=dev).tril() & valid.unsqueeze(1)  # (B, T, T)
    top = torch.cat([hist, torch.zeros(b, t, c, dtype=torch.bool, device=dev)], dim=2)  # (B, T, T+C)
    eye = torch.eye(c, dtype=torch.bool, device=dev).expand(b, c, c)
    seen = valid.unsqueeze(1).expand(b, c, t)  # (B, C, T)
    if cuts is not None:
        seen = seen & (torch.arange(t, device=dev) <= cuts.unsqueeze(-1))
    bottom = torch.cat([seen, eye], dim=2)  # (B, C, T+C)
    return torch.cat([top, bottom], dim=1).float()
