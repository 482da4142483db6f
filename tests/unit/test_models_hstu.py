"""HSTU model: config validation, causality, KV-cache equality, M-FALCON candidate independence, codes."""

import pytest
import torch

from models.hstu import HSTU, HSTUConfig
from models.sasrec import SASRec, SASRecConfig


def _model(**kw: object) -> HSTU:
    torch.manual_seed(0)
    cfg = HSTUConfig(**{"n_items": 50, "max_len": 16, "dim": 32, "n_layers": 2, "n_heads": 2, **kw})
    model = HSTU(cfg).eval()
    with torch.no_grad():  # non-zero biases so the position/time paths are exercised
        model.pos_bias.normal_(std=0.5)
        model.time_bias.normal_(std=0.5)
        model.candidate_marker.normal_(std=0.5)
    return model


def _history(b: int = 3, t: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 51, (b, t), generator=g)
    times = 1_600_000_000 + torch.cumsum(torch.randint(1, 200_000, (b, t), generator=g), dim=1)
    items[0, :4] = 0  # left padding on one row
    times[0, :4] = 0
    return items, times


@pytest.mark.parametrize(
    ("field", "value"), [("dim", 0), ("n_heads", 3), ("dropout", 1.0), ("temperature", 0.0)]
)
def test_config_rejects_bad_value_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"HSTUConfig\.{field}={value!r} is invalid"):
        HSTUConfig(**{"n_items": 10, "dim": 32, field: value})


def test_codes_must_match_config() -> None:
    with pytest.raises(ValueError, match="n_code_levels=2"):
        HSTU(HSTUConfig(n_items=5, n_code_levels=2, codebook_size=4))
    with pytest.raises(ValueError, match=r"codes must be in \[0, codebook_size=4\)"):
        HSTU(HSTUConfig(n_items=5, n_code_levels=2, codebook_size=4), torch.full((6, 2), 4))


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_changing_a_future_item_leaves_earlier_outputs_unchanged(kind: str) -> None:
    torch.manual_seed(0)
    model = _model() if kind == "hstu" else SASRec(SASRecConfig(n_items=50, max_len=16, dim=32)).eval()
    items, times = _history()
    changed = items.clone()
    changed[:, 8] = (changed[:, 8] % 50) + 1
    with torch.no_grad():
        before, after = model(items, times), model(changed, times)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert (before[:, 8:] - after[:, 8:]).abs().max() > 1e-3  # the change does reach later positions


def test_incremental_encoding_equals_full_recompute() -> None:
    model = _model()
    items, times = _history(t=14)
    with torch.no_grad():
        full = model.user_state(items, times)  # (B, D)
    cache = model.encode(items[:, :6], times[:, :6])
    cache = model.extend(cache, items[:, 6:7], times[:, 6:7])  # one event
    cache = model.extend(cache, items[:, 7:], times[:, 7:])  # then several
    assert cache.length == 14
    assert (cache.last_hidden - full).abs().max() < 1e-5  # float32 suffices


def test_extend_rejects_padding() -> None:
    model = _model()
    items, times = _history()
    cache = model.encode(items, times)
    with pytest.raises(ValueError, match="padding"):
        model.extend(cache, torch.zeros(3, 1, dtype=torch.long), times[:, -1:])


def test_pair_scores_do_not_depend_on_other_candidates() -> None:
    model = _model()
    items, times = _history()
    with torch.no_grad():
        _, s1 = model.pair_repr(items, times, torch.tensor([[5, 6, 7]] * 3))
        _, s2 = model.pair_repr(items, times, torch.tensor([[7, 9, 10, 11, 5]] * 3))
        hist_plain = model(items, times)
        hist_with, _ = model.encode_with_candidates(items, times, torch.tensor([[5, 6, 7]] * 3))
        _, s3 = model.pair_repr(items.flip(0), times.flip(0), torch.tensor([[5, 6, 7]] * 3))
    assert torch.allclose(s1[:, 0], s2[:, 4], atol=1e-5)  # candidate 5
    assert torch.allclose(s1[:, 2], s2[:, 0], atol=1e-5)  # candidate 7
    assert torch.allclose(hist_plain, hist_with, atol=1e-5)  # history never sees candidates
    assert (s1 - s3.flip(0)).abs().max() < 1e-5 and (s1[0] - s1[1]).abs().max() > 1e-3  # history matters


def test_codes_give_items_sharing_codes_related_embeddings() -> None:
    torch.manual_seed(0)
    codes = torch.tensor([[0, 0], [1, 2], [1, 2], [3, 0], [0, 1]])  # items 1 and 2 share both codes
    model = HSTU(HSTUConfig(n_items=4, dim=16, n_code_levels=2, codebook_size=4), codes)
    with torch.no_grad():
        model.item_emb.ids.weight.zero_()  # an untrained (cold) id embedding contributes ~nothing
    table = model.item_emb.table()
    assert torch.equal(table[1], table[2]) and table[1].norm() > 0.05
    assert not torch.allclose(table[1], table[3]) and torch.equal(table[0], torch.zeros(16))


def test_gated_pair_starts_at_the_retrieval_score_and_opens_with_its_gate() -> None:
    """pair_gate: with the gate at 0 the pair score is the user state's score of the item (what retrieval
    ranks by); once the gate opens the candidate's own output changes it. Without the gate it never equals."""
    items, times = _history()
    cand = torch.tensor([[5, 6, 7, 8]] * 3)
    gated, plain = _model(pair_gate=True), _model()
    with torch.no_grad():
        scores = gated.user_state(items, times) @ gated.item_embeddings().T
        dot = scores.gather(1, cand) * gated.logit_scale()
        _, closed = gated.pair_repr(items, times, cand)
        gated.pair_gate.fill_(0.5)
        _, opened = gated.pair_repr(items, times, cand)
        _, ungated = plain.pair_repr(items, times, cand)
    assert torch.allclose(closed, dot, atol=1e-4)
    assert (opened - dot).abs().max() > 1e-2
    assert (ungated - dot).abs().max() > 1e-2
    assert "pair_gate" not in dict(plain.named_parameters())  # old checkpoints load unchanged


def test_pair_with_a_cut_equals_the_pair_of_the_history_up_to_the_cut() -> None:
    """Training cuts: a candidate cut at position k scores as if the history ended at event k."""
    model = _model(pair_gate=True)
    with torch.no_grad():
        model.pair_gate.fill_(0.7)
    items, times = _history(t=12)
    cand = torch.tensor([[5, 6, 9, 11]] * 3)
    cuts = torch.tensor([[11, 11, 7, 9]] * 3)  # row 0 is padded up to position 3
    with torch.no_grad():
        _, cut_vec = model.encode_with_candidates(items, times, cand, cuts=cuts)
        for j in range(cand.shape[1]):
            k = int(cuts[0, j])
            want, _ = model.pair_repr(items[:, : k + 1], times[:, : k + 1], cand[:, j : j + 1])
            assert torch.allclose(cut_vec[:, j], want[:, 0], atol=1e-5), j
