"""Process-level helpers for entry points: logging set-up and user-facing error handling."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from specrec.config import Config, load_config
from specrec.errors import SpecrecError


def setup_logging(level: int = logging.INFO) -> None:
    """Log `time level name: message` to stderr (called by entry points only, never at import)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpcore", "faiss.loader", "alembic", "urllib3"):  # one line per request is noise
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_entry(fn: Callable[[], object]) -> None:
    """Run an entry point; a SpecrecError becomes a one-line message and exit code 1, not a traceback."""
    setup_logging()
    try:
        fn()
    except SpecrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def stage_main(run: Callable[[Config], object], description: str, argv: list[str] | None = None) -> None:
    """The thin main of a pipeline stage: `python -m <module> [--params params.yaml]` runs run(config)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="path to params.yaml")
    args = parser.parse_args(argv)
    run_entry(lambda: run(load_config(args.params)))
