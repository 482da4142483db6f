"""The one switch between the embedded and production profiles, and how the production servers resolve."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import yaml

from specrec.config import ServicesConfig, load_config
from specrec.errors import ConfigError, SpecrecError, StoreUnreachable
from specrec.services import check_postgres, endpoints, env_lines
from specrec.tracking import artifact_location, local_uri, use_project_store

ROOT = Path(__file__).resolve().parents[2]
SERVER_VARS = (
    "SPECREC_PROFILE",
    "SPECREC_REDIS",
    "SPECREC_FEAST_REGISTRY_URL",
    "MLFLOW_TRACKING_URI",
    "SPECREC_ARTIFACT_ROOT",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the repo's params.yaml in a temp folder, with none of the profile's variables set."""
    for var in SERVER_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    return path


def test_params_default_is_embedded(params: Path) -> None:
    cfg = load_config(params)
    assert cfg.profile == "embedded" and not cfg.production
    assert cfg.feast_yaml == "feature_store.yaml"


def test_environment_switch_overrides_params(params: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECREC_PROFILE", "production")
    cfg = load_config(params)
    assert cfg.production and cfg.feast_yaml == "feature_store.production.yaml"
    raw = yaml.safe_load(params.read_text()) | {"profile": "production"}
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SPECREC_PROFILE", "embedded")
    assert load_config(params).profile == "embedded"


def test_bad_switch_names_the_value(params: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECREC_PROFILE", "prod")
    with pytest.raises(SpecrecError, match=r"SPECREC_PROFILE='prod'.*embedded.*production"):
        load_config(params)
    raw = yaml.safe_load(params.read_text()) | {"profile": "staging"}
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("SPECREC_PROFILE")
    with pytest.raises(ConfigError, match="profile = 'staging'"):
        load_config(params)


def test_old_feast_profile_key_says_where_it_went(params: Path) -> None:
    raw = yaml.safe_load(params.read_text())
    raw["feast"]["profile"] = "production"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="top-level `profile:`"):
        load_config(params)


def test_servers_resolve_params_then_environment_then_make_services(
    params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(load_config(params), profile="production")
    defaults = endpoints(cfg)
    assert defaults.redis == "127.0.0.1:16379"  # what `make services` runs
    assert defaults.mlflow_tracking_uri.endswith("@127.0.0.1:15432/mlflow")
    assert defaults.prefect_database_url.startswith("postgresql+asyncpg://")
    assert defaults.artifact_root == str((params.parent / "mlflow" / "artifacts").resolve())
    # what `make services` prints to export is what the profile resolves to by default
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env_lines())
    assert exported["SPECREC_PROFILE"] == "production"
    assert exported["SPECREC_REDIS"] == defaults.redis
    assert exported["MLFLOW_TRACKING_URI"] == defaults.mlflow_tracking_uri
    assert exported["PREFECT_API_DATABASE_CONNECTION_URL"] == defaults.prefect_database_url

    monkeypatch.setenv("SPECREC_REDIS", "10.0.0.5:6379")
    monkeypatch.setenv("SPECREC_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert endpoints(cfg).redis == "10.0.0.5:6379"
    assert endpoints(cfg).artifact_root == "s3://bucket/mlflow"
    named = dataclasses.replace(cfg, services=ServicesConfig(redis="redis.internal:6379,db=3"))
    assert endpoints(named).redis == "redis.internal:6379,db=3"  # params.yaml first

    secret = dataclasses.replace(
        cfg, services=ServicesConfig(mlflow_tracking_uri="postgresql+psycopg://ml:hunter2@db:5432/mlflow")
    )
    shown = dict(endpoints(secret).rows())
    assert "hunter2" not in shown["mlflow_tracking_uri"] and "ml:***@db" in shown["mlflow_tracking_uri"]


def test_experiments_get_the_artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECREC_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert artifact_location(tmp_path, "fm-train") == (tmp_path / "mlflow/artifacts/fm-train").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://specrec@127.0.0.1:15432/mlflow")
    assert artifact_location(tmp_path, "fm-train") is None  # no root named: the store's default
    monkeypatch.setenv("SPECREC_ARTIFACT_ROOT", str(tmp_path / "art"))
    assert artifact_location(tmp_path, "fm-train") == (tmp_path / "art" / "fm-train").as_uri()
    monkeypatch.setenv("SPECREC_ARTIFACT_ROOT", "s3://bucket/mlflow/")
    assert artifact_location(tmp_path, "fm-train") == "s3://bucket/mlflow/fm-train"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert artifact_location(tmp_path, "fm-train") is None  # the server proxies artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_uri(tmp_path))
    monkeypatch.delenv("SPECREC_ARTIFACT_ROOT")
    assert artifact_location(tmp_path, "x") == (tmp_path / "mlflow/artifacts/x").as_uri()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_one_line_naming_the_setting(params: Path) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://specrec:pw@127.0.0.1:{port}/mlflow"
    cfg = dataclasses.replace(
        load_config(params), profile="production", services=ServicesConfig(mlflow_tracking_uri=url)
    )
    with pytest.raises(StoreUnreachable) as err:
        use_project_store(cfg)  # before mlflow is pointed anywhere: its client would retry for minutes
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "services.mlflow_tracking_uri" in text
    assert "make services" in text and "pw" not in text and "\n" not in text
    with socket.socket() as listening:  # something accepting connections there: no error
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_postgres(
            "MLflow tracking", "mlflow_tracking_uri", url.replace(str(port), str(listening.getsockname()[1]))
        )
    for not_tcp in ("sqlite:///x.db", "postgresql+psycopg://specrec@/mlflow?host=/var/run/postgresql"):
        check_postgres("MLflow tracking", "mlflow_tracking_uri", not_tcp)  # nothing to probe over TCP


def test_flow_tasks_retry_a_store_that_is_down_but_not_bad_input() -> None:
    from prefect.states import Completed, Failed

    from flows.common import retry_unless_user_error

    down = Failed(
        data=StoreUnreachable("MLflow tracking: PostgreSQL at 127.0.0.1:1 does not accept connections")
    )
    assert retry_unless_user_error(None, None, down)
    assert not retry_unless_user_error(
        None, None, Failed(data=ConfigError("clock.cadence", "x", "a duration"))
    )
    assert retry_unless_user_error(None, None, Failed(data=ConnectionError("reset")))
    assert not retry_unless_user_error(None, None, Completed(data=1))
