"""The `specrec` command as a user runs it: version, help, stages, and errors without tracebacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from specrec import __version__

SPECREC = str(Path(sys.executable).parent / "specrec")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPECREC, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"specrec {__version__}"
    assert __version__ != "0.0.0+unknown"


def test_every_option_has_help() -> None:
    for cmd in (
        ["data", "ingest"],
        ["data", "prepare"],
        ["data", "split"],
        ["clock", "show"],
        ["fm", "train"],
        ["fm", "evaluate"],
    ):
        proc = _run(*cmd, "--help")
        assert proc.returncode == 0
        assert "--params" in proc.stdout and "Path to params.yaml" in proc.stdout


def test_bad_params_value_is_one_clear_line(tmp_path: Path, root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["clock"]["cadence"] = "sometimes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _run("data", "split", "--params", str(tmp_path / "params.yaml"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "clock.cadence = 'sometimes'" in proc.stderr and "positive duration" in proc.stderr


def test_missing_input_names_the_stage_to_run(tmp_path: Path, root: Path) -> None:
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    proc = _run("data", "prepare", "--params", str(tmp_path / "params.yaml"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ingested interactions not found" in proc.stderr and "dvc repro" in proc.stderr


def test_clock_show_lists_cycles(root: Path) -> None:
    proc = _run("clock", "show", "--params", str(root / "params.yaml"))
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == yaml.safe_load((root / "params.yaml").read_text())["clock"]["cycles"]
    assert "as_of 2018-01-29" in lines[0]


def test_stage_module_entry_point(root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "specrec.data.ingest", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--params" in proc.stdout


def test_production_store_down_is_one_line_not_minutes_of_retries(tmp_path: Path, root: Path) -> None:
    """MLflow's client retries a refused PostgreSQL for about two minutes; the command says so at once."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "production"
    params["services"]["mlflow_tracking_uri"] = f"postgresql+psycopg://specrec@127.0.0.1:{port}/mlflow"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _run("report", "--params", str(tmp_path / "params.yaml"))  # 120 s timeout: a hang fails here
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "services.mlflow_tracking_uri" in proc.stderr
    assert "make services" in proc.stderr
