"""LoRA adapters on a tiny CPU HSTU: merged vs unmerged, save -> load, new-item rows, warm start, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import lora
from models.hstu import HSTU, HSTUConfig


def _base(seed: int = 0) -> HSTU:
    torch.manual_seed(seed)
    return HSTU(HSTUConfig(n_items=60, max_len=12, dim=16, n_layers=2, dropout=0.1)).eval()


def _histories(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 61, (5, 12), generator=gen)
    items[0, :4] = 0  # left padding
    ts = torch.cumsum(torch.randint(1, 5000, (5, 12), generator=gen), dim=1) + 1_500_000_000
    return items, ts


def _windows(seed: int = 2, n: int = 16) -> list[lora.Window]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.integers(1, 61, 10).astype(np.int64)
        items[-3:] = rng.integers(55, 61, 3)  # the newest events are on new items 55..60
        out.append(lora.Window(items, np.arange(10, dtype=np.int64) * 60 + 1_500_000_000, 7))
    return out


def _scores(model: torch.nn.Module) -> torch.Tensor:
    items, ts = _histories()
    with torch.no_grad():
        return model.user_state(items, ts) @ model.item_embeddings().T  # type: ignore[operator]


def _trained(base: HSTU, rows: tuple[int, ...] = (55, 56, 57, 58, 59, 60)) -> torch.nn.Module:
    model = lora.wrap(base, lora.AdapterSpec(("f1", "f2"), 4, 8.0, 0.0, rows))
    lora.finetune(model, _windows(), epochs=3, lr=0.02, batch_size=4, progress=False)
    return model


def test_fresh_adapter_equals_base_and_leaves_base_untouched() -> None:
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora.wrap(base, lora.AdapterSpec(token_rows=(55, 56)))
    assert torch.equal(_scores(model), _scores(base))  # LoRA B starts at 0, token rows at the base's values
    trained = _trained(base)
    assert not torch.allclose(_scores(trained), _scores(base), atol=1e-4)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_only_adapter_parameters_and_new_item_rows_train() -> None:
    base = _base()
    model = _trained(base)
    table_base, table = base.item_embeddings(), model.item_embeddings().detach()
    changed = torch.nonzero((table - table_base).abs().amax(1) > 0).flatten().tolist()
    assert changed and set(changed) <= {55, 56, 57, 58, 59, 60}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or "trainable_tokens_delta" in n for n in trainable)


def test_merged_equals_unmerged() -> None:
    model = _trained(_base())
    merged = lora.merge(model)
    assert isinstance(merged, HSTU)
    assert torch.max(torch.abs(_scores(merged) - _scores(model))).item() < 1e-5
    assert not any("lora" in k or "token" in k for k in merged.state_dict())


def test_save_load_reproduces_adapter_exactly(tmp_path: Path) -> None:
    base = _base()
    model = _trained(base)
    model.save_pretrained(str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    loaded = lora.load(base, tmp_path)
    saved, back = lora.adapter_state(model), lora.adapter_state(loaded)
    assert sorted(saved) == sorted(back) and saved
    assert all(torch.equal(saved[k], back[k]) for k in saved)
    assert torch.equal(_scores(loaded), _scores(model))
    assert lora.token_rows(loaded) == [55, 56, 57, 58, 59, 60]


def test_warm_start_copies_lora_and_shared_rows() -> None:
    base = _base()
    old = _trained(base, rows=(55, 56))
    new = lora.wrap(base, lora.AdapterSpec(("f1", "f2"), 4, 8.0, 0.0, (55, 56, 57)))
    assert lora.warm_start(new, old) == 2
    table_old, table_new = old.item_embeddings().detach(), new.item_embeddings().detach()
    assert torch.equal(table_new[[55, 56]], table_old[[55, 56]])
    assert torch.equal(table_new[57], base.item_embeddings()[57])
    assert torch.equal(_scores(new), _scores(old))  # old never trained row 57: it is the base's in both
    old_lora = {k: v for k, v in lora.adapter_state(old).items() if ".lora_" in k}
    new_lora = lora.adapter_state(new)
    assert all(torch.equal(v, new_lora[k]) for k, v in old_lora.items())


def test_bad_target_module_and_rows_are_named() -> None:
    with pytest.raises(ValueError, match="q_proj"):
        lora.wrap(_base(), lora.AdapterSpec(target_modules=("q_proj",)))
    with pytest.raises(ValueError, match="outside the item table"):
        lora.wrap(_base(), lora.AdapterSpec(token_rows=(61,)))


def test_user_windows_cover_every_new_event_once() -> None:
    items = np.arange(1, 31, dtype=np.int64)
    ts = np.arange(30, dtype=np.int64)
    windows = lora.user_windows(items, ts, first_new=12, max_len=5)
    targets = sorted(int(t) for w in windows for t in w.items[w.first_target :])
    assert targets == list(range(13, 31))  # events at index 12.. (items 13..30), each once
    assert all(len(w.items) <= 6 and w.first_target >= 1 for w in windows)
    batch = lora.window_batch(windows)
    assert batch.n_targets() == 18


def test_batches_group_windows_by_length_and_cover_each_once() -> None:
    rng = np.random.default_rng(0)
    lengths = np.where(rng.random(400) < 0.05, 60, rng.integers(2, 8, 400))  # mostly short, a few long
    windows = [lora.Window(np.arange(1, n + 1), np.arange(n), 1) for n in lengths]
    padded, steps = {}, {}
    for by_length in (True, False):
        seen, cells, steps[by_length] = [], 0, 0
        for batch in lora.batches(windows, 16, np.random.default_rng(1), by_length):
            seen += [int(w[w > 0][-1]) for w in batch.targets]  # each window's last target is its length
            cells, steps[by_length] = cells + batch.items.numel(), steps[by_length] + 1
            if by_length:  # about 16 random windows' worth of targets, however long its windows are
                assert batch.n_targets() < 2 * 16 * np.mean(lengths - 1) or len(batch.targets) == 1
        assert sorted(seen) == sorted(int(n) for n in lengths)  # every window once, none cut
        padded[by_length] = cells
    assert padded[True] < 0.5 * padded[False]  # grouped batches pad to their own length, not a rare long one
    assert 0.8 < steps[True] / steps[False] < 1.25  # as many optimizer steps per epoch


def test_early_stopping_keeps_the_best_epoch() -> None:
    model = lora.wrap(_base(), lora.AdapterSpec(("f1", "f2"), 4, 8.0, 0.0, (55, 56)))
    planned, states = iter([0.1, 0.3, 0.2, 0.25, 0.9]), []

    def validate(m: torch.nn.Module) -> float:
        states.append(lora.adapter_state(m))  # type: ignore[arg-type]
        return next(planned)

    out = lora.finetune(model, _windows(), 10, 0.02, 4, progress=False, validate=validate, patience=2)
    assert out.val_scores == [0.1, 0.3, 0.2, 0.25] and len(out.losses) == 4  # 2 epochs without a better one
    assert out.best_epoch == 2
    kept = lora.adapter_state(model)
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)  # epoch 2's adapter, not the last one
    assert not all(torch.equal(kept[k], states[3][k]) for k in kept)
    nothing = lora.finetune(model, _windows(), 3, 0.02, 4, progress=False, validate=lambda m: float("nan"))
    assert len(nothing.losses) == 3 and nothing.best_epoch == 3  # unscoreable validation: no early stopping


def _full_ce(model: torch.nn.Module, windows: list[lora.Window]) -> float:
    from models.losses import full_cross_entropy

    batch, base = lora.window_batch(windows), model.get_base_model()  # type: ignore[operator]
    keep = batch.targets > 0
    with torch.no_grad():
        hidden = model(batch.items, batch.timestamps)
        return float(
            full_cross_entropy(hidden[keep], batch.targets[keep], base.item_embeddings(), base.logit_scale())
        )


def test_sampled_softmax_update_lowers_the_full_softmax_loss() -> None:
    model = lora.wrap(_base(), lora.AdapterSpec(("f1", "f2"), 4, 8.0, 0.0, (55, 56, 57, 58, 59, 60)))
    windows = _windows()
    before = _full_ce(model, windows)
    out = lora.finetune(
        model, windows, 5, 0.02, 4, loss="sampled_softmax", progress=False, n_uniform=8, n_inbatch=8
    )
    assert len(out.losses) == 5 and out.losses[-1] < out.losses[0]
    assert _full_ce(model, windows) < before - 0.1  # trained on 16 negatives, better against all 60 items
    with pytest.raises(ValueError, match="'bpr'"):
        lora.finetune(model, windows, 1, 0.02, 4, loss="bpr", progress=False)


def test_linear_schedule_decays_the_rate_to_zero_over_the_epochs() -> None:
    model = lora.wrap(_base(), lora.AdapterSpec(("f1", "f2"), 4, 8.0, 0.0, (55, 56)))
    out = lora.finetune(model, _windows(), 4, 0.02, 4, progress=False, schedule="linear")
    assert out.lrs == pytest.approx([0.015, 0.01, 0.005, 0.0])  # 4 batches an epoch, 16 steps in all
    flat = lora.finetune(model, _windows(), 2, 0.02, 4, progress=False)
    assert flat.lrs == [0.02, 0.02]
    with pytest.raises(ValueError, match="'cosine'"):
        lora.finetune(model, _windows(), 1, 0.02, 4, progress=False, schedule="cosine")


def test_same_inputs_give_the_same_adapter() -> None:
    base = _base()
    torch.manual_seed(123)  # the global RNG state must not matter
    a = lora.adapter_state(_trained(base))
    torch.manual_seed(456)
    b = lora.adapter_state(_trained(base))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("score", "champion", "floor", "tolerance", "ok"),
    [
        (0.10, None, None, 0.0, True),  # nothing to beat
        (0.10, 0.10, 0.05, 0.0, False),  # a tie with the champion is not a win without tolerance
        (0.10, 0.10, 0.05, 0.001, True),
        (0.10, 0.08, 0.12, 0.001, False),  # worse than the bare base
        (0.10, 0.08, 0.1005, 0.001, True),  # within the tolerance of the bare base
    ],
)
def test_gate_rule(
    score: float, champion: float | None, floor: float | None, tolerance: float, ok: bool
) -> None:
    from specrec.lora.adapters import passes

    assert passes(score, champion, floor, tolerance) is ok
