"""MLflow home: `import mlflow` is the library, and runs land in the project's store by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from specrec import tracking


def test_import_mlflow_is_the_library(root: Path) -> None:
    import mlflow

    assert hasattr(mlflow, "start_run")
    location = Path(mlflow.__file__).resolve()
    assert "site-packages" in location.parts and location.parent != root / "mlflow"
    assert not (root / "mlflow" / "__init__.py").exists()


def test_default_store_is_the_project_sqlite(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(root) == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(root) == "http://127.0.0.1:5000"
    assert tracking.artifact_location(root, "fm-train") is None


def test_run_logs_to_project_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.use_project_store(tmp_path)
    exp = tracking.experiment_id(tmp_path, "test-tracking")
    assert tracking.experiment_id(tmp_path, "test-tracking") == exp  # found, not created twice
    with mlflow.start_run(experiment_id=exp, run_name="2018-01-29") as run:
        mlflow.log_metric("ndcg_at_10", 0.1)
        mlflow.log_text("hello", "note.txt")
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert (tmp_path / "mlflow" / "artifacts" / "test-tracking").is_dir()
    found = mlflow.search_runs([exp], output_format="list")
    assert [r.info.run_name for r in found] == ["2018-01-29"] and found[0].info.run_id == run.info.run_id
    assert uri.startswith("sqlite:///")
