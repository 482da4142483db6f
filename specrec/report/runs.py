"""Runs of one MLflow experiment as a table that lines up by cycle (the `as_of` tag), and the compare-view
check: one run per as_of and the same metric keys in every run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from specrec.clock import Cycle, to_utc
from specrec.errors import SpecrecError

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class Runs:
    """One experiment's runs (optionally one kind of them), newest cycle last."""

    experiment: str
    experiment_id: str | None  # None: the experiment does not exist yet
    frame: pd.DataFrame  # one row per run: run_id, run_name, as_of, cycle, tags.<k>, <metric keys>
    keys: dict[str, frozenset[str]] = field(default_factory=dict)  # run_id -> its metric keys

    def __len__(self) -> int:
        return len(self.frame)

    def where(self, tag: str, value: str) -> Runs:
        """The runs whose tag `tag` equals `value`."""
        if f"tags.{tag}" not in self.frame:
            return Runs(self.experiment, self.experiment_id, self.frame.iloc[0:0], {})
        rows = self.frame[self.frame[f"tags.{tag}"] == value]
        return Runs(self.experiment, self.experiment_id, rows, {r: self.keys[r] for r in rows["run_id"]})

    def values(self, key: str) -> pd.Series:
        """A metric (or column) per run, NaN where a run lacks it."""
        return self.frame[key] if key in self.frame else pd.Series(float("nan"), index=self.frame.index)


def cycle_name(as_of: pd.Timestamp) -> str:
    """The run name of the cycle ending at as_of (Cycle.name: the ISO date, or the instant off midnight)."""
    return Cycle(0, as_of, as_of).name


def load_runs(experiment: str, tags: tuple[str, ...] = ()) -> Runs:
    """Every finished run of `experiment` (MLflow must point at the store), ordered by as_of."""
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return Runs(experiment, None, _frame([], tags), {})
    runs = mlflow.search_runs(
        [found.experiment_id], "attributes.status = 'FINISHED'", output_format="list", max_results=50_000
    )
    return Runs(
        experiment,
        str(found.experiment_id),
        _frame(runs, tags),
        {r.info.run_id: frozenset(r.data.metrics) for r in runs},
    )


def _frame(runs: list[Run], tags: tuple[str, ...]) -> pd.DataFrame:
    """Runs as rows; as_of from the tag, else the run name; runs with neither (e.g. bundles) are left out."""
    rows = []
    for r in runs:
        as_of = _as_of(r.data.tags.get("as_of") or r.info.run_name or "")
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "as_of": as_of}
        row |= {f"tags.{t}": r.data.tags.get(t, "") for t in tags}
        rows.append(row | dict(r.data.metrics))
    columns = ["run_id", "run_name", "as_of", *(f"tags.{t}" for t in tags)]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    if frame.empty:
        return frame.assign(cycle=pd.Series(dtype=str))
    frame = frame.dropna(subset=["as_of"]).sort_values("as_of", kind="stable").reset_index(drop=True)
    return frame.assign(cycle=[cycle_name(t) for t in frame["as_of"]])


def _as_of(text: str) -> pd.Timestamp | None:
    """A run's as_of as a UTC timestamp, or None when it has none."""
    try:
        return to_utc(text)
    except (SpecrecError, ValueError):
        return None


def alignment(runs: Runs, by: str = "cycle") -> list[str]:
    """What breaks the compare view: cycles with several runs, runs whose metric keys differ from the rest."""
    problems = []
    repeated = runs.frame[by].value_counts()
    for cycle, n in repeated[repeated > 1].sort_index().items():
        problems.append(f"{n} runs for {by} {cycle}")
    sets = {runs.keys[r] for r in runs.frame["run_id"]}
    if len(sets) > 1:
        common, union = frozenset.intersection(*sets), frozenset.union(*sets)
        problems.append(f"metric keys differ between runs: {', '.join(sorted(union - common))}")
    return problems


def run_link(ui: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """A link into the MLflow UI: the experiment's runs (machine-learning view) or one run."""
    if experiment_id is None:
        return ""
    base = ui.rstrip("/")
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def cycle_of(clock_cycles: list[Cycle], when: pd.Series) -> pd.Series:
    """The name of the clock cycle each instant belongs to, (start, as_of], so work done at as_of (the
    cycle's precompute runs at as_of) lines up with the cycle's other runs; outside the clock, its date."""
    out = []
    for t in when:
        hit = next((c for c in clock_cycles if c.start < t <= c.as_of), None)
        out.append(hit.name if hit else str(t.date()))
    return pd.Series(out, index=when.index, dtype=str)
