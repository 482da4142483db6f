"""Drift detection over the serving model's holdout error with ADWIN (river.drift.ADWIN), kept across runs.

Each cycle contributes the per-event errors (1 - NDCG@10 of each holdout event) of the model that served
before the cycle's update; ADWIN watches their mean. A single number per cycle would give ADWIN ten-odd
points, too few for its bound to ever fire at a useful confidence; per-event values give it hundreds.
Within a cycle the events are shuffled (seeded): they come grouped by user, and ADWIN assumes no order
inside a cycle. The state is a JSON file: the values since the last retraining of the base (replayed
into a fresh ADWIN each run, which rebuilds its state exactly) and one record per cycle with the alarm,
the statistic and the decision. After an alarm the window is cleared once the base has been retrained.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from river.drift import ADWIN

from specrec.config import LoraDriftConfig
from specrec.errors import SpecrecError


@dataclass(frozen=True)
class DriftCheck:
    """One cycle's drift check: the alarm and ADWIN's statistic before and after this cycle's values."""

    as_of: str
    alarm: bool
    cycle_error: float  # mean error of this cycle's events (NaN when none)
    n_values: int  # this cycle's values
    mean_before: float  # ADWIN's window mean before this cycle (NaN when empty)
    mean_after: float  # ADWIN's window mean after this cycle (the recent part when it cut)
    width_before: int
    width_after: int
    decision: str  # 'retrain_base' | 'none'

    def metrics(self) -> dict[str, float]:
        """The check as MLflow metrics (the same keys every cycle)."""
        return {
            "drift_alarm": float(self.alarm),
            "drift_cycle_error": self.cycle_error,
            "drift_mean_before": self.mean_before,
            "drift_mean_after": self.mean_after,
            "drift_width_before": float(self.width_before),
            "drift_width_after": float(self.width_after),
        }


def _detector(cfg: LoraDriftConfig) -> ADWIN:
    """A fresh ADWIN with the configured parameters."""
    return ADWIN(
        delta=cfg.delta,
        clock=cfg.clock,
        min_window_length=cfg.min_window_length,
        grace_period=cfg.grace_period,
    )


class DriftMonitor:
    """ADWIN over per-event errors, persisted in a JSON state file."""

    def __init__(self, cfg: LoraDriftConfig, path: Path) -> None:
        self.cfg, self.path = cfg, path
        state = self._read()
        self.window: list[float] = [float(v) for v in state.get("window", [])]
        self.cycles: list[dict[str, Any]] = list(state.get("cycles", []))

    def _read(self) -> dict[str, Any]:
        """The stored state, or an empty one."""
        if not self.path.exists():
            return {}
        try:
            state = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise SpecrecError(
                f"drift state {self.path} is not valid JSON ({exc}); delete it to start a new ADWIN window."
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("window", []), list):
            raise SpecrecError(f"drift state {self.path} has no 'window' list; delete it to start afresh.")
        return state

    def _replayed(self) -> ADWIN:
        """An ADWIN that has seen the stored window, value by value (deterministic, so exact)."""
        detector = _detector(self.cfg)
        for value in self.window:
            detector.update(value)
        return detector

    def check(self, as_of: str, errors: list[float], seed: int = 0) -> DriftCheck:
        """Feed one cycle's errors to ADWIN; record and save the check. The alarm is any detection."""
        detector = self._replayed()
        before = (detector.estimation if detector.width else math.nan, int(detector.width))
        values = list(np.random.default_rng(seed).permutation(np.asarray(errors, dtype=np.float64)))
        alarm = False
        for value in values:
            detector.update(float(value))
            alarm = alarm or bool(detector.drift_detected)
        self.window.extend(float(v) for v in values)
        result = DriftCheck(
            as_of=as_of,
            alarm=alarm,
            cycle_error=float(np.mean(values)) if values else math.nan,
            n_values=len(values),
            mean_before=float(before[0]),
            mean_after=float(detector.estimation) if detector.width else math.nan,
            width_before=before[1],
            width_after=int(detector.width),
            decision="retrain_base" if alarm else "none",
        )
        self.cycles.append(asdict(result))
        self.save()
        return result

    def reset(self, as_of: str, reason: str) -> None:
        """Start a new window (after the base was retrained); the cycle records stay."""
        self.window = []
        self.cycles.append({"as_of": as_of, "reset": reason})
        self.save()

    def save(self) -> None:
        """Write the state file (atomically: a crash leaves the old or the new state, never half)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"window": self.window, "cycles": self.cycles}, indent=1) + "\n")
        tmp.replace(self.path)
