"""Process-level helpers for entry points: logging set-up and user-facing error handling."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

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
