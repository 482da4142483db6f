"""The lora section of params.yaml: the shipped values load; bad values are rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from specrec.config import load_config
from specrec.errors import ConfigError


def _load(tmp_path: Path, lora: dict) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"lora": lora}))
    load_config(path)


def test_shipped_lora_section(root: Path) -> None:
    lc = load_config(root / "params.yaml").lora
    assert lc.target_modules == ["f1", "f2"] and lc.r >= 1 and 0 < lc.holdout_share < 1
    assert lc.drift.state.endswith(".json")


@pytest.mark.parametrize(
    ("lora", "key"),
    [
        ({"target_modules": "f1"}, "lora.target_modules"),
        ({"target_modules": []}, "lora.target_modules"),
        ({"target_modules": ["f1", 3]}, "lora.target_modules"),
        ({"r": 0}, "lora.r"),
        ({"replay_share": 1.0}, "lora.replay_share"),
        ({"holdout_share": 0}, "lora.holdout_share"),
        ({"val_share": 0.5}, "lora.val_share"),
        ({"patience": 0}, "lora.patience"),
        ({"loss": "bpr"}, "lora.loss"),
        ({"lr_schedule": "cosine"}, "lora.lr_schedule"),
        ({"promote_metric": "mrr"}, "lora.promote_metric"),
        ({"supervise": "all"}, "lora.supervise"),
        ({"train_since": "yesterday"}, "lora.train_since"),
        ({"min_events": 0}, "lora.min_events"),
        ({"drift": {"clock": 0}}, "lora.drift.clock"),
        ({"drift": {"unknown": 1}}, "lora.drift.unknown"),
    ],
)
def test_bad_lora_values_are_named(tmp_path: Path, lora: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load(tmp_path, lora)


def test_adapter_rows_are_new_items_and_with_cycle_item_rows_every_trained_on_item(root: Path) -> None:
    import dataclasses

    from specrec.lora.finetune import spec

    cfg = load_config(root / "params.yaml")

    def rows(new_item_rows: bool, cycle_item_rows: bool) -> tuple[int, ...]:
        lc = dataclasses.replace(cfg.lora, new_item_rows=new_item_rows, cycle_item_rows=cycle_item_rows)
        return spec(dataclasses.replace(cfg, lora=lc), [9, 7], [3, 7, 9]).token_rows

    assert rows(True, False) == (7, 9)
    assert rows(True, True) == rows(False, True) == (3, 7, 9)  # (new items are among those trained on)
    assert rows(False, False) == ()


def test_schedule_names_agree_with_the_training_loop() -> None:
    from models.lora import LR_SCHEDULES
    from specrec import config

    assert config.LR_SCHEDULES == LR_SCHEDULES  # config validates what models.lora.finetune runs
