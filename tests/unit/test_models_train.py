"""Training, losses and checkpoints on a tiny synthetic dataset with learnable sequential structure."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.evaluate import PopularityScorer, compute_ranks, evaluate
from models.hstu import HSTU, HSTUConfig
from models.losses import full_cross_entropy, next_item_loss, sampled_softmax
from models.sequences import EvalSet, Sequences, leave_one_out
from models.train import TrainConfig, build_model, load_checkpoint, save_checkpoint, train

N_CLUSTERS, CLUSTER = 8, 8
N_ITEMS = N_CLUSTERS * CLUSTER


def cluster_walks(n_users: int, seed: int, skip_item: int = 0) -> Sequences:
    """Each next item is a random item of the next cluster (90%) or any item: learnable, popularity-flat."""
    rng = np.random.default_rng(seed)
    items, times = [], []
    for _ in range(n_users):
        c, seq = rng.integers(N_CLUSTERS), []
        while len(seq) < rng.integers(6, 12):
            c = (c + 1) % N_CLUSTERS if rng.random() < 0.9 else rng.integers(N_CLUSTERS)
            item = int(c * CLUSTER + rng.integers(CLUSTER) + 1)
            if item != skip_item:
                seq.append(item)
        items.append(np.array(seq, dtype=np.int64))
        times.append(1_600_000_000 + np.cumsum(rng.integers(60, 86_400, len(seq))))
    return Sequences(items, times)


def _hstu(codes: torch.Tensor | None = None, pair_gate: bool = False) -> HSTU:
    torch.manual_seed(0)
    levels = 0 if codes is None else codes.shape[1]
    cfg = HSTUConfig(
        n_items=N_ITEMS,
        max_len=12,
        dim=32,
        n_layers=1,
        dropout=0.1,
        n_code_levels=levels,
        codebook_size=CLUSTER if levels else 0,
        pair_gate=pair_gate,
    )
    return HSTU(cfg, codes)


def test_train_config_rejects_unknown_loss() -> None:
    with pytest.raises(ValueError, match=r"TrainConfig\.loss='bpr' is invalid"):
        TrainConfig(loss="bpr")


def test_losses_agree_when_sampling_every_item() -> None:
    torch.manual_seed(0)
    hidden, table = torch.randn(6, 8), torch.randn(11, 8)
    targets = torch.tensor([1, 4, 4, 7, 10, 2])
    full = full_cross_entropy(hidden, targets, table, 2.0)
    assert torch.isclose(next_item_loss("full_ce", hidden, targets, table, 2.0), full)
    # with uniform negatives covering the catalogue many times, sampled softmax approaches full CE from above
    sampled = sampled_softmax(hidden, targets, table, 2.0, n_uniform=0, n_inbatch=6)
    assert sampled < full
    bf16 = next_item_loss("full_ce", hidden, targets, table, 2.0, bf16=True)
    assert torch.isclose(bf16, full, rtol=2e-2)  # bfloat16 logits, float32 loss
    with pytest.raises(ValueError, match="loss='nope'"):
        next_item_loss("nope", hidden, targets, table, 1.0)


@pytest.mark.parametrize(
    ("kind", "loss"), [("hstu", "sampled_softmax"), ("hstu", "full_ce"), ("sasrec", "full_ce")]
)
def test_training_lowers_loss_and_beats_popularity(kind: str, loss: str) -> None:
    train_data, valid, test = leave_one_out(cluster_walks(400, seed=1))
    torch.manual_seed(0)
    model = build_model(kind, {"n_items": N_ITEMS, "max_len": 12, "dim": 32, "n_layers": 1, "dropout": 0.1})
    seen: list[int] = []
    cfg = TrainConfig(
        loss=loss,
        lr=5e-3,
        batch_size=64,
        max_epochs=12,
        patience=12,
        progress=False,
        n_uniform_negatives=32,
        n_inbatch_negatives=32,
        pair_loss_weight=0.1 if kind == "hstu" else 0.0,
    )
    result = train(model, train_data, valid, cfg, on_epoch=lambda r: seen.append(r.epoch))
    assert seen == list(range(1, result.n_epochs + 1))
    assert result.epochs[-1].loss < 0.8 * result.epochs[0].loss
    hr = evaluate(model, test, 12)["hr@10"]
    pop = evaluate(PopularityScorer(train_data, N_ITEMS), test, 12)["hr@10"]
    # 90% of next items lie in one cluster of 8 out of 64 items: chance-level HR@10 is ~0.16
    assert hr > 3 * pop, (hr, pop)
    assert result.tokens_per_s > 0 and result.best_epoch >= 1


@pytest.mark.parametrize(
    ("negatives_from", "gate", "cuts"),
    [
        ("batch", False, 1),
        ("retrieval", False, 1),
        ("batch", True, 1),
        ("batch", True, 4),
        ("retrieval", True, 4),
    ],
)
def test_pair_loss_trains_target_aware_scores(negatives_from: str, gate: bool, cuts: int) -> None:
    train_data, valid, test = leave_one_out(cluster_walks(400, seed=1))
    model = _hstu(pair_gate=gate)
    cfg = TrainConfig(
        loss="sampled_softmax",
        lr=5e-3,
        batch_size=64,
        max_epochs=10,
        patience=10,
        progress=False,
        n_uniform_negatives=32,
        n_inbatch_negatives=32,
        pair_loss_weight=0.5,
        pair_negatives_from=negatives_from,
        pair_hard_pool=20,
        pair_cuts=cuts,
    )
    train(model, train_data, valid, cfg)
    items, times = (
        torch.from_numpy(np.stack([h[-5:] for h in test.histories.items[:100]])),
        torch.from_numpy(np.stack([t[-5:] for t in test.histories.timestamps[:100]])),
    )
    nxt = (items[:, -1] - 1) // CLUSTER + 1  # the next cluster
    good = (nxt % N_CLUSTERS) * CLUSTER + 1  # first item of the next cluster
    bad = ((nxt + 3) % N_CLUSTERS) * CLUSTER + 1  # an item of an unrelated cluster
    with torch.no_grad():
        _, scores = model.pair_repr(items, times, torch.stack([good, bad], dim=1))
    assert (scores[:, 0] > scores[:, 1]).float().mean() > 0.9  # untrained: ~0.5


def test_hard_pair_negatives_come_from_the_models_own_top_items() -> None:
    """Retrieval negatives: the target first, then distinct items of the model's top pool by dot product,
    never padding, a seen item or the target itself."""
    from models.sequences import training_batches
    from models.train import _cut_pair_candidates

    train_data, _, _ = leave_one_out(cluster_walks(64, seed=3))
    model = _hstu().eval()
    batch = next(iter(training_batches(train_data, 32, model.config.max_len, np.random.default_rng(0))))
    cfg = TrainConfig(pair_negatives_from="retrieval", pair_negatives=6, pair_hard_pool=12)
    cands, cuts = _cut_pair_candidates(model, batch, cfg, torch.Generator().manual_seed(0))
    assert (cuts == batch.items.shape[1] - 1).all()  # pair_cuts 1: the newest point only
    assert cands.shape == (len(batch.items), 7)
    assert torch.equal(cands[:, 0], batch.targets[:, -1])
    with torch.no_grad():
        scores = model.user_state(batch.items, batch.timestamps) @ model.item_embeddings().T
    for row, cand in enumerate(cands):
        neg = cand[1:]
        assert len(set(neg.tolist())) == 6
        assert 0 not in neg and cand[0] not in neg
        assert not set(neg.tolist()) & set(batch.items[row].tolist())
        allowed = scores[row].clone()
        allowed[0] = -torch.inf
        allowed[batch.items[row]] = -torch.inf
        allowed[cand[0]] = -torch.inf
        pool = set(allowed.topk(12).indices.tolist())
        assert set(neg.tolist()) <= pool


@pytest.mark.parametrize("negatives_from", ["batch", "retrieval"])
def test_cut_pair_candidates_target_each_cuts_next_item(negatives_from: str) -> None:
    """K cuts per row, the newest first; each group of 1+P starts with the next item after its cut, and
    never uses a padded position as a cut."""
    from models.sequences import training_batches
    from models.train import _cut_pair_candidates

    train_data, _, _ = leave_one_out(cluster_walks(64, seed=3))
    model = _hstu().eval()
    batch = next(iter(training_batches(train_data, 32, model.config.max_len, np.random.default_rng(0))))
    cfg = TrainConfig(pair_cuts=3, pair_negatives=5, pair_negatives_from=negatives_from, pair_hard_pool=10)
    cands, cuts = _cut_pair_candidates(model, batch, cfg, torch.Generator().manual_seed(0))
    b, t = batch.targets.shape
    assert cands.shape == cuts.shape == (b, 3 * 6)
    groups, group_cuts = cands.reshape(b, 3, 6), cuts.reshape(b, 3, 6)
    assert (group_cuts == group_cuts[..., :1]).all()  # one cut per group
    assert (group_cuts[:, 0] == t - 1).all()  # the newest point first
    assert torch.equal(groups[..., 0], batch.targets.gather(1, group_cuts[..., 0]))
    assert (groups[..., 0] > 0).all()  # never a padded position
    if negatives_from == "retrieval":
        assert (groups[..., 1:] != groups[..., :1]).all() and (groups[..., 1:] > 0).all()


def test_train_config_names_bad_pair_negative_settings() -> None:
    with pytest.raises(ValueError, match="pair_negatives_from"):
        TrainConfig(pair_negatives_from="popular")
    with pytest.raises(ValueError, match="pair_hard_pool"):
        TrainConfig(pair_negatives=8, pair_hard_pool=4)
    with pytest.raises(ValueError, match="pair_cuts=0"):
        TrainConfig(pair_cuts=0)


def test_codes_give_an_item_unseen_in_training_a_meaningful_embedding() -> None:
    unseen = 3 * CLUSTER + 5  # item 5 of cluster 3 never occurs in training
    data = cluster_walks(400, seed=2, skip_item=unseen)
    train_data, valid, _ = leave_one_out(data)
    codes = torch.tensor([[0, 0]] + [[(i - 1) // CLUSTER, (i - 1) % CLUSTER] for i in range(1, N_ITEMS + 1)])
    # in-batch negatives only, so the unseen item's id embedding never receives a gradient (a cold item)
    cfg = TrainConfig(
        loss="sampled_softmax",
        lr=5e-3,
        batch_size=64,
        max_epochs=10,
        patience=10,
        progress=False,
        n_uniform_negatives=0,
        n_inbatch_negatives=256,
    )
    ranks = {}
    for name, c in (("codes", codes), ("ids", None)):
        model = _hstu(c)
        id_before = model.item_emb.ids.weight[unseen].clone()
        train(model, train_data, valid, cfg)
        assert torch.equal(model.item_emb.ids.weight[unseen], id_before)
        # users whose last item is in cluster 2 go to cluster 3 next: the unseen item is a right answer
        users = [u for u, h in enumerate(valid.histories.items) if (h[-1] - 1) // CLUSTER == 2]
        probe = EvalSet(
            Sequences(
                [valid.histories.items[u] for u in users], [valid.histories.timestamps[u] for u in users]
            ),
            np.full(len(users), unseen),
        )
        ranks[name] = float(compute_ranks(model, probe, 12).double().median())
    assert ranks["codes"] < CLUSTER + 2 and ranks["codes"] * 3 < ranks["ids"], ranks


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    codes = torch.tensor([[0, 0]] + [[(i - 1) // CLUSTER, (i - 1) % CLUSTER] for i in range(1, N_ITEMS + 1)])
    model = _hstu(codes).eval()
    with torch.no_grad():
        model.pos_bias.normal_()
    save_checkpoint(model, tmp_path / "ckpt", {"note": "test"})
    loaded = load_checkpoint(tmp_path / "ckpt")
    data = cluster_walks(20, seed=3)
    _, _, test = leave_one_out(data)
    items = torch.from_numpy(np.stack([h[-4:] for h in test.histories.items]))
    times = torch.from_numpy(np.stack([t[-4:] for t in test.histories.timestamps]))
    cands = torch.randint(1, N_ITEMS + 1, (20, 5))
    with torch.no_grad():
        assert torch.equal(
            model.user_state(items, times) @ model.item_embeddings().T,
            loaded.user_state(items, times) @ loaded.item_embeddings().T,
        )
        assert torch.equal(model.pair_repr(items, times, cands)[1], loaded.pair_repr(items, times, cands)[1])
    assert loaded.config == model.config
