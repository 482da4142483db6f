"""The report's sections: for each per-cycle experiment, its runs lined up by cycle, a figure and a table.

A section whose experiment has no runs says which command produces them instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from specrec.clock import Cycle
from specrec.report.plots import Panel, curves_plot, cycle_plot, stacked_bars
from specrec.report.runs import Runs, alignment, cycle_of, load_runs, run_link


@dataclass
class Section:
    """One part of the page."""

    key: str
    title: str
    about: str  # what the figure shows, one paragraph
    runs: dict[str, Runs]  # experiment (or experiment/kind) -> its runs
    figures: list[Path] = field(default_factory=list)
    table: pd.DataFrame | None = None
    empty: str = ""  # set when there is nothing to show: says what to run
    notes: list[str] = field(default_factory=list)  # compare-view problems, caveats

    @property
    def experiments(self) -> dict[str, str]:
        """Experiment name -> id of the experiments the section reads (those that exist)."""
        return {r.experiment: r.experiment_id for r in self.runs.values() if r.experiment_id}

    @property
    def n_runs(self) -> int:
        """How many runs the section draws on."""
        return sum(len(r) for r in self.runs.values())


@dataclass(frozen=True)
class Context:
    """What every section needs: where figures go, the MLflow UI, the clock's cycles, the codebook size."""

    folder: Path
    stem: str
    ui: str
    cycles: list[Cycle]
    codebook_size: int

    def png(self, key: str) -> Path:
        """The PNG path of a section's figure (beside the HTML file)."""
        return self.folder / f"{self.stem}_{key}.png"


def _by_cycle(runs: Runs, key: str) -> pd.Series:
    """A metric per cycle (the last run of a cycle when there are several)."""
    frame = runs.frame.assign(_v=runs.values(key))
    return frame.groupby("cycle", sort=True)["_v"].last()


def _ordered(*series: pd.Series) -> list[str]:
    """The union of the cycles of some series, in time order (ISO names sort in time order)."""
    return sorted(set().union(*(s.index for s in series)))


def _checked(section: Section, by: str = "cycle") -> Section:
    """Add the compare-view problems of each run group to the section's notes."""
    for name, runs in section.runs.items():
        section.notes += [f"{name}: {p}" for p in alignment(runs, by)]
    return section


def _table(runs: Runs, columns: dict[str, str], ctx: Context) -> pd.DataFrame:
    """Selected columns per run, renamed, with a link to each run."""
    out = pd.DataFrame({"cycle": runs.frame["cycle"]})
    for source, label in columns.items():
        out[label] = runs.frame[source] if source in runs.frame else runs.values(source)
    return out.assign(_link=[run_link(ctx.ui, runs.experiment_id, r) for r in runs.frame["run_id"]])


def quality(ctx: Context) -> Section:
    """NDCG@10 / HR@10 per cycle on each cycle's holdout: frozen base, champion adapter, the new adapter."""
    runs = load_runs("lora-finetune", tags=("status", "reason", "base_version"))
    section = Section(
        "quality",
        "Quality per cycle: frozen base vs daily LoRA",
        "Next-event NDCG@10 and HR@10 (every item ranked) on each cycle's holdout, the newest "
        "events of the cycle that no adapter trained on. 'frozen base' is specrec-fm@champion without an "
        "adapter, 'champion adapter' the adapter serving before the cycle, 'new adapter' the one trained in "
        "the cycle (promoted only when it passes the gate). A skipped cycle has no new-adapter point.",
        {"lora-finetune": runs},
    )
    if not len(runs):
        section.empty = "no lora-finetune runs yet: run `specrec lora run --as-of first`"
        return section
    names = {"base": "frozen base", "champion": "champion adapter", "challenger": "new adapter (this cycle)"}
    panels = [
        Panel(
            title,
            f"{title} on the cycle's holdout",
            {label: _by_cycle(runs, f"{v}_{key}") for v, label in names.items()},
        )
        for title, key in (("NDCG@10", "ndcg_at_10"), ("HR@10", "hr_at_10"))
    ]
    cycles = sorted(runs.frame["cycle"].unique())
    fig = cycle_plot(ctx.png(section.key), "Frozen base vs daily LoRA adapters", cycles, panels)
    section.figures = [f for f in [fig] if f]
    section.table = _table(
        runs,
        {
            "tags.status": "status",
            "base_ndcg_at_10": "base NDCG@10",
            "champion_ndcg_at_10": "champion NDCG@10",
            "challenger_ndcg_at_10": "new NDCG@10",
            "base_hr_at_10": "base HR@10",
            "challenger_hr_at_10": "new HR@10",
            "new_events": "new events",
            "train_cpu_s": "train CPU s",
            "tags.reason": "reason",
        },
        ctx,
    )
    return _checked(section)


def _live(precompute: Runs, cycles: list[Cycle]) -> pd.DataFrame:
    """Per cycle, the precompute windows' own accounting: coverage of the windows that ended, precision of
    the rows whose life ended (pair-weighted)."""
    f = precompute.frame
    if f.empty:
        return pd.DataFrame(columns=["windows", "pairs", "coverage", "precision"])
    pairs = precompute.values("expired_rows_pairs").fillna(0.0)
    used = (precompute.values("expired_rows_precision") * pairs).fillna(0.0)
    frame = pd.DataFrame(
        {
            "cycle": cycle_of(cycles, f["as_of"]),
            "hits": precompute.values("last_window_hits").fillna(0.0),
            "served": precompute.values("last_window_served").fillna(0.0),
            "pairs_written": precompute.values("pairs").fillna(0.0),
            "pairs": pairs,
            "used": used,
        }
    )
    g = frame.groupby("cycle", sort=True).agg(
        windows=("hits", "size"),
        hits=("hits", "sum"),
        served=("served", "sum"),
        pairs_written=("pairs_written", "sum"),
        pairs=("pairs", "sum"),
        used=("used", "sum"),
    )
    return g.assign(
        coverage=np.where(g["served"] > 0, g["hits"] / g["served"].where(g["served"] > 0), np.nan),
        precision=np.where(g["pairs"] > 0, g["used"] / g["pairs"].where(g["pairs"] > 0), np.nan),
    )


def speculation(ctx: Context, replay: Runs) -> Section:
    """Coverage and precision per cycle: the retrain evaluation, the live precompute ledger, the replay."""
    runs = load_runs("speculation", tags=("kind",))
    retrain, precompute = runs.where("kind", "retrain"), runs.where("kind", "precompute")
    section = Section(
        "speculation",
        "Speculation coverage and precision per cycle",
        "Coverage: the share of served (user, item) pairs whose FM pair representation was precomputed and "
        "still live; precision: the share of precomputed pairs that were served before expiring. "
        "'evaluation span' is retrain_speculator's replay of the days before as_of at the default budget; "
        "'precompute windows' is what speculative_precompute itself accounted in the cycle's windows; "
        "'replay (requests with a hit)' is the share of `specrec replay` requests whose answer used a "
        "precomputed pair.",
        {"speculation (retrain)": retrain, "speculation (precompute)": precompute},
    )
    live = _live(precompute, ctx.cycles)
    replay_cov = _by_cycle(replay, "spec_coverage") if len(replay) else pd.Series(dtype=float)
    if not len(retrain) and not len(precompute):
        section.empty = (
            "no speculation runs yet: run `specrec speculation train --as-of first`, then "
            "`specrec speculation precompute --as-of DATETIME` (or `specrec replay`)"
        )
        return section
    cov, prec = _by_cycle(retrain, "coverage"), _by_cycle(retrain, "precision")
    panels = [
        Panel(
            "Coverage",
            "share of served pairs precomputed",
            {
                "evaluation span (retrain)": cov,
                "precompute windows": live["coverage"],
                "replay (requests with a hit)": replay_cov,
            },
            (0.0, 1.05),
        ),
        Panel(
            "Precision",
            "share of precomputed pairs served",
            {"evaluation span (retrain)": prec, "precompute windows": live["precision"]},
            (0.0, 1.05),
        ),
    ]
    cycles = _ordered(cov, live["coverage"], replay_cov)
    fig = cycle_plot(ctx.png(section.key), "Speculative precompute", cycles, panels)
    section.figures = [f for f in [fig] if f]
    table = pd.DataFrame(index=pd.Index(cycles, name="cycle"))
    table["eval coverage"], table["eval precision"] = cov, prec
    table["precompute windows"] = live["windows"]
    table["pairs written"] = live["pairs_written"]
    table["live coverage"], table["live precision"] = live["coverage"], live["precision"]
    table["replay hit share"] = replay_cov
    section.table = table.reset_index().assign(_link="")
    section.notes += [f"speculation (retrain): {p}" for p in alignment(retrain)]
    section.notes += [f"speculation (precompute): {p}" for p in alignment(precompute, "as_of")]
    return section


REPLAY_COLUMNS = {
    "requests": "requests",
    "errors": "errors",
    "degraded": "degraded",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
    "latency_p99_ms": "p99 ms",
    "hr_at_10": "HR@10",
    "ndcg_at_10": "NDCG@10",
    "spec_hits": "spec hits",
    "spec_coverage": "spec coverage",
    "cycle_seconds": "cycle s",
}


def latency(ctx: Context, replay: Runs) -> Section:
    """Latency percentiles per cycle of the replay against the real scorer; errors and degraded answers."""
    section = Section(
        "latency",
        "Serving latency per cycle (replay)",
        "Each cycle's events replayed as HTTP requests against the running scorer (`specrec replay`): "
        "end-to-end latency percentiles measured by the client in milliseconds, and the share of requests "
        "that failed or were answered degraded (the online store missed its deadline).",
        {"replay": replay},
    )
    if not len(replay):
        section.empty = "no replay runs yet: run `specrec replay --cycles 3`"
        return section
    cycles = sorted(replay.frame["cycle"].unique())
    requests = _by_cycle(replay, "requests").where(lambda s: s > 0)
    panels = [
        Panel(
            "Latency percentiles",
            "latency (ms)",
            {p: _by_cycle(replay, f"latency_{p}_ms") for p in ("p50", "p95", "p99")},
        ),
        Panel(
            "Errors and degraded answers",
            "share of requests",
            {
                "errors": _by_cycle(replay, "errors") / requests,
                "degraded": _by_cycle(replay, "degraded") / requests,
            },
        ),
    ]
    fig = cycle_plot(ctx.png(section.key), "Replay against the scorer", cycles, panels)
    section.figures = [f for f in [fig] if f]
    section.table = _table(replay, REPLAY_COLUMNS, ctx)
    return _checked(section)


def codebook(ctx: Context) -> Section:
    """Utilisation and entropy per level and the collision rate of the serving codebook, per cycle."""
    runs = load_runs("codebook-refresh", tags=("stage", "retrained", "serving_codebook_version"))
    section = Section(
        "codebook",
        "Codebook health per cycle",
        "Health of the semantic-ID codebook that serves after each run (initial training at clock.start, "
        "then codebook_refresh per cycle): per level, the share of the K codes in use and the entropy of "
        "the code distribution relative to log2 K (1.0 = uniform; a dip at a middle level is the hourglass "
        "collapse), and the share of items whose codes collide (they need a disambiguation index).",
        {f"codebook-refresh ({s})": runs.where("stage", s) for s in ("codebook", "refresh")},
    )
    if not len(runs):
        section.empty = (
            "no codebook-refresh runs yet: run `dvc repro codebook`, then `specrec codebook refresh "
            "--as-of first`"
        )
        return section
    levels = sorted(int(k.rsplit("_l", 1)[1]) for k in runs.frame if str(k).startswith("utilisation_l"))
    bits = float(np.log2(ctx.codebook_size))
    panels = [
        Panel(
            "Utilisation per level",
            "share of the K codes used",
            {f"level {lvl}": _by_cycle(runs, f"utilisation_l{lvl}") for lvl in levels},
            (0.0, 1.05),
        ),
        Panel(
            "Entropy per level",
            f"entropy / log2 K (K = {ctx.codebook_size})",
            {f"level {lvl}": _by_cycle(runs, f"entropy_l{lvl}") / bits for lvl in levels},
            (0.0, 1.05),
        ),
        Panel("Collisions", "share of items colliding", {"all levels": _by_cycle(runs, "collision_rate")}),
    ]
    cycles = sorted(runs.frame["cycle"].unique())
    fig = cycle_plot(ctx.png(section.key), "Semantic-ID codebook health", cycles, panels)
    section.figures = [f for f in [fig] if f]
    section.table = _table(
        runs,
        {
            "tags.stage": "stage",
            "new_items": "new items",
            "items": "items",
            "collision_rate": "collision rate",
            "recon_error": "recon error",
            "drift_retrain": "retrain",
            "tags.serving_codebook_version": "serving version",
        },
        ctx,
    )
    return _checked(section)


def materialize(ctx: Context) -> Section:
    """Rows written and rows/s per cycle for each nearline view."""
    runs = load_runs("materialize", tags=("view", "bundle_id", "mode"))
    views = sorted(v for v in runs.frame.get("tags.view", pd.Series(dtype=str)).unique() if v)
    section = Section(
        "materialize",
        "Nearline materialization throughput per cycle",
        "Rows written to the Feast online store (and its parquet history) per cycle and view, and the "
        "write throughput in rows per second (rows over the seconds of the runs; a cycle without new rows "
        "has no throughput). A new bundle writes every item; later cycles only new items and changed users.",
        {f"materialize ({v})": runs.where("view", v) for v in views},
    )
    if not len(runs):
        section.empty = "no materialize runs yet: run `specrec nearline run --as-of first`"
        return section
    frame = runs.frame.assign(rows=runs.values("rows_written"), secs=runs.values("seconds"))
    g = frame.groupby(["tags.view", "cycle"]).agg(
        runs=("run_id", "size"), rows=("rows", "sum"), secs=("secs", "sum")
    )
    g["rows/s"] = (g["rows"] / g["secs"]).where(g["rows"] > 0)
    panels = [
        Panel("Throughput", "rows per second (log)", {v: g.loc[v, "rows/s"] for v in views}, log=True),
        Panel("Rows written", "rows", {v: g.loc[v, "rows"] for v in views}),
    ]
    cycles = sorted(runs.frame["cycle"].unique())
    fig = cycle_plot(ctx.png(section.key), "Nearline writes", cycles, panels)
    section.figures = [f for f in [fig] if f]
    table = g.reset_index().rename(columns={"tags.view": "view", "secs": "seconds"})
    section.table = table[["cycle", "view", "runs", "rows", "seconds", "rows/s"]].assign(_link="")
    for name, r in section.runs.items():  # one run per (view, cycle, bundle): a new bundle adds its own
        by = r.frame.assign(key=r.frame["cycle"] + " / " + r.frame.get("tags.bundle_id", ""))
        keyed = Runs(r.experiment, r.experiment_id, by, r.keys)
        section.notes += [f"{name}: {p}" for p in alignment(keyed, "key")]
    return section


def fm(ctx: Context) -> Section:
    """The FM's training runs: validation NDCG@10 per epoch, test metrics against popularity."""
    import mlflow

    runs = load_runs("fm-train", tags=("stage", "trigger"))
    section = Section(
        "fm",
        "Foundation model accuracy",
        "Validation NDCG@10 per epoch of each FM training run (train_fm at clock.start, retrain_base on "
        "drift), and in the table the leave-one-out test metrics (every item ranked) with the popularity "
        "baseline on the same users.",
        {"fm-train": runs},
    )
    if not len(runs):
        section.empty = "no fm-train runs yet: run `dvc repro train_fm` (or `specrec fm train`)"
        return section
    client, curves = mlflow.MlflowClient(), {}
    for _, row in runs.frame.tail(8).iterrows():  # the newest runs: more curves are unreadable
        hist = client.get_metric_history(str(row["run_id"]), "val_ndcg_at_10")
        label = f"{row['cycle']} ({row['tags.trigger'] or row['tags.stage'] or 'train'})"
        curves[label] = pd.Series({m.step: m.value for m in hist}, dtype=float).sort_index()
    fig = curves_plot(ctx.png(section.key), "FM training", curves, "epoch", "validation NDCG@10")
    section.figures = [f for f in [fig] if f]
    section.table = _table(
        runs,
        {
            "tags.stage": "stage",
            "tags.trigger": "trigger",
            "best_val_ndcg_at_10": "best val NDCG@10",
            "test_ndcg_at_10": "test NDCG@10",
            "test_hr_at_10": "test HR@10",
            "test_popularity_ndcg_at_10": "popularity NDCG@10",
            "test_popularity_hr_at_10": "popularity HR@10",
            "epochs": "epochs",
            "train_seconds": "train s",
        },
        ctx,
    )
    return section


STEPS = ("ingest", "lora", "codebook", "speculator", "item_repr", "item_stats", "user_state", "precompute")


def cycles(ctx: Context) -> Section:
    """The daily cycle (flow run_cycle): seconds per step and what each step did, per cycle."""
    runs = load_runs("cycle", tags=tuple(f"step.{s}" for s in STEPS))
    section = Section(
        "cycle",
        "Daily cycles (run_cycle)",
        "Wall-clock seconds of each step of the flow run_cycle per cycle, stacked: the cycle's events "
        "admitted, the LoRA adapter, the codebook refresh, the speculator, the bundle's item rows, item "
        "statistics, user states and the speculative precompute. The table gives what each step did.",
        {"cycle": runs},
    )
    if not len(runs):
        section.empty = (
            "no cycle runs yet: run `specrec replay --cycles 3` (every replay cycle runs run_cycle)"
        )
        return section
    found = [k[len("seconds_") :] for k in runs.frame if str(k).startswith("seconds_")]
    steps = [s for s in STEPS if s in found] + sorted(set(found) - set(STEPS))
    names = sorted(runs.frame["cycle"].unique())
    fig = stacked_bars(
        ctx.png(section.key),
        "Daily cycle: seconds per step",
        names,
        {s: _by_cycle(runs, f"seconds_{s}") for s in steps},
        "wall-clock seconds",
    )
    section.figures = [f for f in [fig] if f]
    section.table = _table(runs, {"events": "events"} | {f"tags.step.{s}": s for s in STEPS}, ctx)
    return _checked(section)


def build_sections(ctx: Context) -> list[Section]:
    """Every section, in page order."""
    replay = load_runs("replay")
    return [
        cycles(ctx),
        quality(ctx),
        speculation(ctx, replay),
        latency(ctx, replay),
        codebook(ctx),
        materialize(ctx),
        fm(ctx),
    ]
