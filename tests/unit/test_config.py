"""Config: the shipped params.yaml loads; bad values are rejected naming key, value and range."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from specrec.config import Config, load_config
from specrec.errors import ConfigError, SpecrecError


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_shipped_params_load(root: Path) -> None:
    cfg = load_config(root / "params.yaml")
    assert cfg.data.source == "movielens_csv"
    assert cfg.root == root
    assert cfg.path(cfg.data.path).joinpath("ratings.csv").is_file()


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().clock.cycles = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("params", "key", "fragment"),
    [
        ({"clock": {"cycles": 0}}, "clock.cycles", "between 1 and 100000"),
        ({"clock": {"cadence": "-1D"}}, "clock.cadence", "positive duration"),
        ({"clock": {"cadence": "often"}}, "clock.cadence", "positive duration"),
        ({"clock": {"start": "not a date"}}, "clock.start", "ISO date"),
        ({"validate": {"max_quarantine_share": 1.5}}, "validate.max_quarantine_share", "between 0.0 and 1.0"),
        ({"validate": {"rating_min": 6}}, "validate.rating_min", "not above validate.rating_max"),
        ({"data": {"source": "excel"}}, "data.source", "movielens_csv"),
        ({"data": {"archive": {"name": "ml-2m"}}}, "data.archive.name", "ml-1m"),
        ({"data": {"archive": {"sha256": "abc"}}}, "data.archive.sha256", "64 hexadecimal"),
        ({"data": {"sequence": {"align": "middle"}}}, "data.sequence.align", "'start', 'end'"),
        ({"data": {"table": {"columns": {"uid": "user"}}}}, "data.table.columns.uid", "canonical column"),
        ({"clock": {"cycles": "ten"}}, "clock.cycles", "an integer"),
        ({"clock": {"cycels": 3}}, "clock.cycels", "known key"),
        ({"nonsense": {}}, "nonsense", "known key"),
    ],
)
def test_bad_values_name_key_value_and_range(tmp_path: Path, params: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, params))
    assert err.value.key == key
    message = str(err.value)
    assert key in message and fragment in message
    value: object = params
    for part in key.split("."):
        value = value[part]  # type: ignore[index]
    assert err.value.value == value and repr(value) in message


def test_missing_params_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecrecError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("clock: [unclosed")
    with pytest.raises(SpecrecError, match="not valid YAML"):
        load_config(path)
