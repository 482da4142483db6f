"""The RQ-VAE codebook on constructed cases: semantic IDs are unique, health metrics are what they
should be, the drift thresholds trigger (or not) a retrain, code alignment and FM code embeddings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.codebook import (
    RQVAE,
    RQVAEConfig,
    RQVAETrainConfig,
    align_codes,
    collision_index,
    semantic_ids,
    train_rqvae,
)
from models.hstu import HSTU, HSTUConfig
from specrec.codebook import health as hl
from specrec.codebook.fm_codes import with_code_embeddings
from specrec.codebook.text import check_unique_items, content_text
from specrec.config import CodebookDriftConfig
from specrec.errors import ConfigError, DataError


def test_semantic_ids_are_unique_and_keep_existing_ones() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    sids = semantic_ids(codes)
    assert sids[:, -1].tolist() == [0, 1, 0, 2, 1, 0]
    assert len({tuple(r) for r in sids}) == len(sids)
    # new items continue after the indices already taken, existing ones are not touched
    more = semantic_ids(np.array([[1, 2], [0, 0], [5, 5]]), taken=sids)
    assert more[:, -1].tolist() == [3, 2, 0]
    assert len({tuple(r) for r in np.concatenate([sids, more])}) == len(sids) + len(more)


def test_collision_index_with_gaps_in_taken() -> None:
    taken = np.array([[4, 4, 0], [4, 4, 5]])  # index 5 held: the next one is 6, never a held one
    assert collision_index(np.array([[4, 4]]), taken).tolist() == [6]


def test_utilisation_entropy_and_collisions_on_a_constructed_case() -> None:
    k = 4
    # level 1: codes 0,1,2,3 used equally (utilisation 1, entropy 2 bits); level 2: code 0 only (0 bits)
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [0, 0], [1, 0], [2, 0], [3, 0]])
    assert hl.utilisation(codes, k) == [1.0, 0.25]
    assert hl.entropy(codes, k) == pytest.approx([2.0, 0.0])
    assert hl.collision_rate(codes) == pytest.approx(1 - 4 / 8)
    skewed = np.array([[0, 1], [0, 2], [0, 3], [1, 1]])  # level 1: p = (3/4, 1/4)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert hl.entropy(skewed, k)[0] == pytest.approx(h)
    assert hl.collision_rate(skewed) == 0.0
    assert hl.prefix_changed(codes[:4], np.array([[0, 0], [1, 1], [3, 0], [3, 0]]), 1) == 0.25
    assert hl.prefix_changed(codes[:4], np.array([[0, 0], [1, 1], [3, 0], [3, 0]]), 2) == 0.5


def test_expected_distinct_matches_simulation() -> None:
    p = np.array([0.5, 0.3, 0.1, 0.1])
    rng = np.random.default_rng(0)
    sim = np.mean([len(np.unique(rng.choice(4, 5, p=p))) for _ in range(4000)])
    assert hl.expected_distinct(p, 5) == pytest.approx(sim, abs=0.05)


def _reference(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, (n, 3))


def test_drift_below_thresholds_does_not_retrain() -> None:
    k, cfg = 16, CodebookDriftConfig(min_items=50, max_new_share=0.5, retrain_on_fm_change=False)
    ref, new = _reference(2000, k), _reference(200, k, seed=1)  # same distribution, same errors
    d = hl.drift(ref, np.full(2000, 0.5), new, np.full(200, 0.5), k, cfg)
    assert not d.retrain, d.reasons
    assert min(d.utilisation_ratio_per_level) > 0.9 and min(d.entropy_ratio_per_level) > 0.9


def test_drift_thresholds_trigger_retrain() -> None:
    k, cfg = 16, CodebookDriftConfig(min_items=50, max_new_share=0.5, retrain_on_fm_change=False)
    ref = _reference(2000, k)
    collapsed = np.zeros((200, 3), dtype=np.int64)  # every new item on one code: collapse
    d = hl.drift(ref, np.full(2000, 0.5), collapsed, np.full(200, 0.5), k, cfg)
    assert d.retrain and any("utilisation" in r for r in d.reasons) and any("entropy" in r for r in d.reasons)
    worse = hl.drift(ref, np.full(2000, 0.5), _reference(200, k, 1), np.full(200, 1.0), k, cfg)
    assert worse.reasons == ["recon_ratio 2.000 > 1.5"]
    many = hl.drift(ref, np.full(2000, 0.5), _reference(1200, k, 1), np.full(1200, 0.5), k, cfg)
    assert many.reasons == ["new_share 0.600 > 0.5"]
    few = hl.drift(ref, np.full(2000, 0.5), collapsed[:10], np.full(10, 0.5), k, cfg)
    assert not few.retrain  # below min_items: too few to judge
    fm = hl.drift(ref, np.full(2000, 0.5), ref[:0], np.zeros(0), k, CodebookDriftConfig(), fm_changed=True)
    assert fm.reasons == ["the FM champion changed"]


def test_align_codes_recovers_a_permutation() -> None:
    rng = np.random.default_rng(0)
    old = rng.integers(0, 8, (500, 2))
    perm = np.stack([rng.permutation(8), rng.permutation(8)])  # new numbering = perm[old]
    new = np.stack([perm[0][old[:, 0]], perm[1][old[:, 1]]], axis=1)
    back = align_codes(old, new, 8)
    assert (np.stack([back[0][new[:, 0]], back[1][new[:, 1]]], axis=1) == old).all()


def _clusters(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Items in 8 clear clusters, content 12-d and collab 4-d, all with both parts."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, 16, generator=g) * 3
    x = centres[torch.arange(n) % 8] + 0.1 * torch.randn(n, 16, generator=g)
    return x, torch.ones(n, 2, dtype=torch.bool)


def test_rqvae_trains_codes_clusters_and_handles_missing_parts() -> None:
    torch.manual_seed(0)
    x, mask = _clusters(240)
    model = RQVAE(
        RQVAEConfig(content_dim=12, collab_dim=4, latent_dim=8, hidden=32, levels=2, codebook_size=8)
    )
    losses = train_rqvae(model, x, mask, RQVAETrainConfig(epochs=25, batch_size=120, progress=False))
    assert losses[-1] < losses[0]
    codes = model.encode(x, mask).numpy()  # (N, L)
    assert codes.shape == (240, 2) and codes.min() >= 0 and codes.max() < 8
    cluster = np.arange(240) % 8
    # items of one cluster share their first code far more often than chance (1/8)
    same = np.mean(
        [np.mean(codes[cluster == c, 0] == np.bincount(codes[cluster == c, 0]).argmax()) for c in range(8)]
    )
    assert same > 0.8
    content_only = model.encode(x, torch.tensor([[True, False]]).expand(240, 2)).numpy()
    assert (content_only[:, 0] == codes[:, 0]).mean() > 0.6  # text alone lands mostly where both do
    err = model.item_errors(x, mask)
    assert err.shape == (240,) and torch.isfinite(err).all()


def test_fm_code_embeddings_keep_trained_items_and_embed_new_ones_by_code() -> None:
    torch.manual_seed(0)
    fm = HSTU(HSTUConfig(n_items=6, dim=8))
    codes = np.array([[-1, -1], [0, 1], [0, 1], [1, 0], [0, 1], [1, 1], [-1, -1]])
    trained = np.array([0, 1, 1, 1, 0, 1, 0], dtype=bool)
    new = with_code_embeddings(fm, codes, trained, codebook_size=2)
    before, after = fm.item_emb.table().detach(), new.item_emb.table().detach()
    assert torch.allclose(before[trained], after[trained], atol=1e-5)  # trained items unchanged
    assert torch.allclose(after[6], before[6])  # no ID: keeps its id embedding
    assert torch.allclose(after[0], torch.zeros(8))  # padding
    # item 4 (codes (0, 1), never trained) is pulled towards items 1 and 2, which share its codes
    mean12 = (before[1] + before[2]) / 2
    assert torch.cosine_similarity(after[4], mean12, dim=0) > 0.9
    assert torch.cosine_similarity(before[4], mean12, dim=0) < 0.5


def test_duplicate_item_ids_are_refused_with_the_ids_named() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 2, 3, 7, 7], "title": list("abcdef"), "genres": [""] * 6})
    with pytest.raises(DataError, match=r"2 duplicate item_id\(s\): \[2, 7\]"):
        check_unique_items(items, "the item table")


def test_content_text_and_items_without_text() -> None:
    items = pd.DataFrame({"title": ["Heat (1995)", "", None], "genres": ["Action|Crime", "", ""]})
    assert content_text(items).tolist() == ["Heat (1995). Action, Crime", "", ""]


def test_codebook_config_is_validated() -> None:
    from specrec.config import CodebookConfig

    with pytest.raises(ConfigError, match="codebook.stability_prefix"):
        CodebookConfig(levels=2, stability_prefix=3)


def test_fm_trained_with_codes_gets_new_items_codes_and_zero_id_rows() -> None:
    from specrec.codebook.fm_codes import code_table

    torch.manual_seed(0)
    train_codes = np.array([[-1, -1], [0, 1], [1, 0], [-1, -1]])  # item 3 unknown at training: null code
    fm = HSTU(HSTUConfig(n_items=3, dim=8, n_code_levels=2, codebook_size=3), code_table(train_codes, 4, 2))
    now = np.array([[-1, -1], [0, 1], [1, 0], [0, 1]])
    new = with_code_embeddings(fm, now, np.array([0, 1, 1, 0], dtype=bool), codebook_size=2)
    assert new.item_emb.codes[3].tolist() == [0, 1]
    assert torch.allclose(new.item_emb.ids.weight[3], torch.zeros(8))
    code_part = new.item_emb.code_emb(new.item_emb.codes[3] + new.item_emb.code_offsets).sum(0)
    assert torch.allclose(new.item_emb.table()[3], code_part)  # the new item embeds by its codes alone
    assert torch.allclose(new.item_emb.table()[1], fm.item_emb.table()[1])
    with pytest.raises(ValueError, match="retrain the FM"):
        with_code_embeddings(fm, now, np.ones(4, dtype=bool), codebook_size=4)
