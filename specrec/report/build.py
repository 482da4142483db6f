"""Build the report: every section from the MLflow store, the HTML page and its PNGs, logged to MLflow."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from specrec.clock import ReplayClock
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.report.page import render
from specrec.report.sections import Context, Section, build_sections
from specrec.tracking import experiment_id, use_project_store

log = logging.getLogger(__name__)

EXPERIMENT = "report"
DEFAULT_OUT = Path("reports") / "report.html"


def default_ui() -> str:
    """The address `make mlflow-ui` serves on (mlflow/server.sh: MLFLOW_HOST, MLFLOW_PORT)."""
    return f"http://{os.environ.get('MLFLOW_HOST', '127.0.0.1')}:{os.environ.get('MLFLOW_PORT', '5000')}"


@dataclass(frozen=True)
class Report:
    """Where the page and its figures are, and the MLflow run that holds them."""

    html: Path
    figures: list[Path]
    run_id: str
    runs: dict[str, int]  # section key -> runs it drew on


def build_report(cfg: Config, out: Path | None = None, ui: str | None = None) -> Report:
    """Write the page (default reports/report.html under the project) and log it to MLflow `report`."""
    ui = ui or default_ui()
    path = _checked_out((out if out is not None else cfg.root / DEFAULT_OUT).resolve())
    store = use_project_store(cfg)
    ctx = Context(
        path.parent,
        path.stem,
        ui,
        ReplayClock.from_config(cfg.clock).cycles(),
        cfg.codebook.codebook_size,
    )
    sections = build_sections(ctx)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")  # a label for the reader, not a data path
    path.write_text(render(sections, ui, store, generated), encoding="utf-8")
    figures = [f for s in sections for f in s.figures]
    run_id = _log(cfg, path, figures, sections)
    log.info("report: %s (%d figures), MLflow run %s", path, len(figures), run_id)
    return Report(path, figures, run_id, {s.key: s.n_runs for s in sections})


def _checked_out(path: Path) -> Path:
    """The HTML path, its folder created; a folder or a non-HTML name is refused."""
    if path.is_dir() or path.suffix.lower() not in (".html", ".htm"):
        raise SpecrecError(f"--out {path} is not an HTML file path; give one such as reports/report.html.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _newest_cycle(sections: list[Section]) -> str:
    """The newest cycle any section shows (the report run's name), or 'no-cycles'."""
    names = [c for s in sections for r in s.runs.values() for c in r.frame.get("cycle", [])]
    return max(names) if names else "no-cycles"


def _log(cfg: Config, html: Path, figures: list[Path], sections: list[Section]) -> str:
    """Log the page and figures as artifacts (report/), the run counts as metrics; return the run id."""
    import mlflow

    newest = _newest_cycle(sections)
    with mlflow.start_run(experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=newest) as run:
        mlflow.set_tags({"newest_cycle": newest, "html": str(html)})
        mlflow.log_metrics({f"runs_{s.key}": float(s.n_runs) for s in sections})
        mlflow.log_metric("sections_with_runs", float(sum(not s.empty for s in sections)))
        for file in [html, *figures]:
            mlflow.log_artifact(str(file), "report")
    return str(run.info.run_id)
