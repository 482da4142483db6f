"""Give the FM semantic-code embeddings, so items it never trained on embed by their codes.

models/hstu.py's ItemEmbedding adds, to an item's id embedding, the sum of its L code embeddings. The
base FM is trained without codes (the codebook is built from its item embeddings afterwards), so the
code embeddings are fitted here in closed form from the trained items, without retraining:

    C = argmin_C  sum_{trained i} || e_i - sum_l C[l, c_il] ||^2 + lam ||C||^2      (ridge, one-hot codes)

then trained items keep exactly their embedding (their id row becomes the residual e_i - sum_l C[l, c_il])
and items the FM never trained on (first seen after its cutoff) get id row 0, so they embed as the sum
of their code embeddings: the average of trained items with the same codes, level by level. Items
without a semantic ID get a null code (index K, embedding 0) and keep their id embedding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from models.train import MODEL_TYPES, RecModel

RIDGE = 1.0


def fit_code_embeddings(targets: torch.Tensor, codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Ridge least squares: code embeddings (L*K, D) whose per-item sums approximate targets (N, D)."""
    n, levels = codes.shape
    cols = codes + torch.arange(levels) * codebook_size  # (N, L) column of each code in the one-hot matrix
    a = torch.zeros(n, levels * codebook_size, dtype=torch.float64)
    a.scatter_(1, cols, 1.0)  # (N, L*K)
    gram = a.T @ a + RIDGE * torch.eye(levels * codebook_size, dtype=torch.float64)
    return torch.linalg.solve(gram, a.T @ targets.double()).float()  # (L*K, D)


def code_table(item_codes: np.ndarray, n_rows: int, codebook_size: int) -> torch.Tensor:
    """(n_rows, L) codes for an FM's ItemEmbedding: the null code K for padding and items without an ID."""
    codes = np.where(item_codes >= 0, item_codes, codebook_size)[:n_rows].copy()
    codes[0] = codebook_size
    return torch.from_numpy(codes.astype(np.int64))


def assign_codes(
    model: RecModel, item_codes: np.ndarray, trained: np.ndarray, codebook_size: int
) -> RecModel:
    """A copy of an FM trained with codes, with new items' codes set and their untrained id rows zeroed."""
    import copy

    n_rows = model.config.n_items + 1
    if model.config.codebook_size != codebook_size + 1 or model.config.n_code_levels != item_codes.shape[1]:
        raise ValueError(
            f"the FM was trained with {model.config.n_code_levels} code levels of "
            f"{model.config.codebook_size} (K + null code), the codebook has {item_codes.shape[1]} of "
            f"{codebook_size}: retrain the FM with this codebook's codes"
        )
    new = copy.deepcopy(model)
    with torch.no_grad():
        new.item_emb.codes.copy_(code_table(item_codes, n_rows, codebook_size))
        untrained = torch.from_numpy((item_codes[:n_rows, 0] >= 0) & ~trained[:n_rows].astype(bool))
        untrained[0] = False
        new.item_emb.ids.weight[untrained] = 0.0
    return new.eval()


def with_code_embeddings(
    model: RecModel, item_codes: np.ndarray, trained: np.ndarray, codebook_size: int
) -> RecModel:
    """A copy of `model` whose item table uses semantic codes.

    item_codes (n_items+1, L) holds each item's L semantic codes (-1 rows: no ID; the collision index
    carries no meaning and is not passed). trained (n_items+1,) marks items whose id embedding the FM
    learned. A model already trained with codes (null code K, as `code_table` builds them) keeps its
    code embeddings: it gets the new items' codes, and their untrained id rows are zeroed.
    """
    if model.config.n_code_levels > 0:
        return assign_codes(model, item_codes, trained, codebook_size)
    n_rows, levels = model.config.n_items + 1, int(item_codes.shape[1])
    codes_t = code_table(item_codes, n_rows, codebook_size)  # (n_items+1, L), null code K: no ID
    config = dataclasses.replace(model.config, n_code_levels=levels, codebook_size=codebook_size + 1)
    _, model_cls = MODEL_TYPES[model.model_type]
    new = model_cls(config, codes_t)  # type: ignore[arg-type]
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("item_emb.")}
    new.load_state_dict(state, strict=False)
    with torch.no_grad():
        ids = model.item_emb.ids.weight.detach().clone()  # (n_items+1, D)
        coded = torch.from_numpy(item_codes[:n_rows, 0] >= 0)
        warm = coded & torch.from_numpy(trained[:n_rows].astype(bool))
        warm[0] = False
        emb = torch.zeros((levels * (codebook_size + 1), ids.shape[1]))
        if warm.any():
            emb = fit_code_embeddings(ids[warm], codes_t[warm], codebook_size + 1)
            null_rows = torch.arange(levels) * (codebook_size + 1) + codebook_size
            emb[null_rows] = 0.0
        new.item_emb.code_emb.weight.copy_(emb)  # type: ignore[union-attr]
        code_sum = emb[codes_t + new.item_emb.code_offsets].sum(1)  # (n_items+1, D)
        ids[warm] -= code_sum[warm]  # trained items keep exactly their embedding
        ids[coded & ~warm] = 0.0  # untrained items: their codes alone
        ids[0] = 0.0
        new.item_emb.ids.weight.copy_(ids)
    return new.eval()
