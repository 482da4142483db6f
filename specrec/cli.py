"""The `specrec` command."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from specrec import __version__

if TYPE_CHECKING:
    from specrec.config import Config

app = typer.Typer(
    help="specrec: keep a generative recommender fresh and cheap to serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Data pipeline stages (the same functions `dvc repro` runs).", no_args_is_help=True
)
clock_app = typer.Typer(help="The replay clock.", no_args_is_help=True)
fm_app = typer.Typer(help="The foundation model (the same functions `dvc repro` runs).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(clock_app, name="clock")
app.add_typer(fm_app, name="fm")
nearline_app = typer.Typer(
    help="Nearline writes to the Feast store (the same code the flows run).", no_args_is_help=True
)
app.add_typer(nearline_app, name="nearline")

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="Path to params.yaml (its folder is the project root).")
]


def _version(value: bool) -> None:
    """Print the version and exit."""
    if value:
        typer.echo(f"specrec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """specrec: keep a generative recommender fresh and cheap to serve."""


def _run(fn: Callable[[Config], object], params: Path) -> None:
    """Load params and run one stage function with user-facing errors."""
    from specrec.config import load_config
    from specrec.runtime import run_entry

    run_entry(lambda: fn(load_config(params)))


@data_app.command("ingest")
def data_ingest(params: ParamsOpt = Path("params.yaml")) -> None:
    """Load the configured source, validate every row, quarantine bad rows with a reason."""
    from specrec.data.ingest import ingest

    _run(ingest, params)


@data_app.command("prepare")
def data_prepare(params: ParamsOpt = Path("params.yaml")) -> None:
    """Build contiguous id maps, the item and user tables and per-user sequences."""
    from specrec.data.prepare import run

    _run(run, params)


@data_app.command("split")
def data_split(params: ParamsOpt = Path("params.yaml")) -> None:
    """Split history/replay at the clock's start and build the leave-one-out view."""
    from specrec.data.split import run

    _run(run, params)


@fm_app.command("train")
def fm_train(
    params: ParamsOpt = Path("params.yaml"),
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Training processes on this machine: >1 runs `torchrun --standalone` with DDP (gloo); "
            "fm.train.batch_size stays the global batch.",
        ),
    ] = 1,
) -> None:
    """Train the FM on history, log it to MLflow (fm-train), register specrec-fm and gate the champion."""
    from specrec.fm.distributed import launch, train_stage

    if nproc > 1:
        raise typer.Exit(launch(params, nproc))
    _run(train_stage, params)


@fm_app.command("evaluate")
def fm_evaluate(params: ParamsOpt = Path("params.yaml")) -> None:
    """Full-ranking test metrics of the trained FM and a popularity baseline."""
    from specrec.fm.evaluate import evaluate_fm

    _run(evaluate_fm, params)


@nearline_app.command("apply")
def nearline_apply(params: ParamsOpt = Path("params.yaml")) -> None:
    """Register the Feast definitions in features/ and create the online tables (like `feast apply`)."""
    from specrec.nearline.store import apply

    _run(apply, params)


@nearline_app.command("items")
def nearline_items(
    as_of: Annotated[str, typer.Option(help="Write the items known before this instant (ISO date or time).")],
    bundle: Annotated[
        str, typer.Option(help="'champion' (the current champions) or a registered bundle id.")
    ] = ("champion"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Materialize a bundle's item representations (complete for a new bundle, else incremental)."""
    from flows.materialize_item_embeddings import resolve_bundle, write_items

    def run(cfg: Config) -> None:
        resolved = resolve_bundle.fn(str(params.resolve()), bundle)
        typer.echo(write_items.fn(str(params.resolve()), as_of, resolved))

    _run(run, params)


@nearline_app.command("run")
def nearline_run(
    as_of: Annotated[
        str, typer.Option(help="The cycle's as_of (ISO date or time); 'first' = the clock's first cycle.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run the nearline Prefect flows for one as_of: item embeddings, item stats, user state."""
    from flows.materialize_item_embeddings import materialize_item_embeddings
    from flows.update_item_stats import update_item_stats
    from flows.update_user_state import update_user_state

    def run(cfg: Config) -> None:
        when = _as_of(cfg, as_of)
        p = str(params.resolve())
        items = materialize_item_embeddings(as_of=when, params=p)
        stats = update_item_stats(as_of=when, params=p)
        users = update_user_state(as_of=when, params=p)
        typer.echo(
            f"as_of {when}: item_repr {items['rows_written']} rows ({items['mode']}, bundle "
            f"{items['bundle_id']}), item_stats {int(stats['rows_written'])} rows, user_state "
            f"{users['rows_written']} rows ({users['mode']})"
        )

    _run(run, params)


codebook_app = typer.Typer(help="The RQ-VAE semantic-ID codebook.", no_args_is_help=True)
app.add_typer(codebook_app, name="codebook")


@codebook_app.command("embed")
def codebook_embed(params: ParamsOpt = Path("params.yaml")) -> None:
    """Content embeddings of every item (MiniLM over title + genres; stage item_text_embed)."""
    from specrec.codebook.text import item_text_embed

    _run(item_text_embed, params)


@codebook_app.command("train")
def codebook_train(params: ParamsOpt = Path("params.yaml")) -> None:
    """Train the initial codebook at clock.start, register and gate it (stage codebook)."""
    from specrec.codebook.train import train_initial

    _run(train_initial, params)


@codebook_app.command("refresh")
def codebook_refresh_cmd(
    as_of: Annotated[
        str, typer.Option(help="Code the items first seen before this instant; 'first' = the first cycle.")
    ],
    feast: Annotated[bool, typer.Option(help="Also write the champion bundle's item_repr to Feast.")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run the Prefect flow codebook_refresh: new items' IDs, drift, retrain on a threshold, Feast."""
    from flows.codebook_refresh import codebook_refresh

    def run(cfg: Config) -> None:
        result = codebook_refresh(as_of=_as_of(cfg, as_of), params=str(params.resolve()), write_feast=feast)
        result.pop("item_repr", None)
        typer.echo(result)

    _run(run, params)


scorer_app = typer.Typer(help="The thin online scorer.", no_args_is_help=True)
app.add_typer(scorer_app, name="scorer")


def _as_of(cfg: Config, as_of: str) -> str:
    """'first' means the clock's first cycle; anything else is taken as given."""
    from specrec.clock import ReplayClock

    return ReplayClock.from_config(cfg.clock).cycle(1).as_of.isoformat() if as_of == "first" else as_of


@scorer_app.command("train")
def scorer_train(
    as_of: Annotated[
        str, typer.Option(help="Train on events before this instant; 'first' = the first cycle.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Distil the thin scorer from the champion FM (flow train_scorer); gate specrec-scorer@champion."""
    from flows.train_scorer import train_scorer

    _run(lambda cfg: typer.echo(train_scorer(as_of=_as_of(cfg, as_of), params=str(params.resolve()))), params)


@app.command("serve-check")
def serve_check(
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 50,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start the scorer on a free loopback port, send real HTTP requests, print answers and latency, stop."""
    from specrec.online.check import check

    _run(lambda cfg: check(cfg, requests), params)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    sequential: Annotated[bool, typer.Option(help="Retrieval, then the user side (for comparison).")] = False,
    candidates: Annotated[int, typer.Option(help="Items retrieved per request before scoring.")] = 200,
    deadline_ms: Annotated[
        float, typer.Option(help="Online-store deadline; past it the answer is degraded.")
    ] = 50.0,
    faiss_threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="OpenMP threads of the ANN search. One query at a time is fastest on one thread: faiss's "
            "default (every core) cost 30-40x more per query on a busy machine (docs/operations.md).",
        ),
    ] = 1,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve recommendations over HTTP (POST /recommend, POST /score, /healthz, /readyz, /metrics)."""

    def run(cfg: Config) -> None:
        import faiss
        import uvicorn

        from specrec.online.app import build_scorer
        from specrec.online.service import create_app

        faiss.omp_set_num_threads(faiss_threads)
        scorer, watch = build_scorer(cfg, not sequential, candidates, deadline_ms / 1000)
        uvicorn.run(
            create_app(scorer, watch),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,  # a log line per request costs more than the request (metrics count them)
            loop="uvloop",
            http="httptools",
        )

    _run(run, params)


@clock_app.command("show")
def clock_show(params: ParamsOpt = Path("params.yaml")) -> None:
    """List the replay cycles with their as_of and window."""
    from specrec.clock import ReplayClock
    from specrec.config import load_config
    from specrec.runtime import run_entry

    def show() -> None:
        clock = ReplayClock.from_config(load_config(params).clock)
        for c in clock.cycles():
            typer.echo(
                f"cycle {c.index:>3}  as_of {c.name}  "
                f"events in [{c.start.isoformat()}, {c.as_of.isoformat()})"
            )

    run_entry(show)


@app.command("profile")
def profile_show(params: ParamsOpt = Path("params.yaml")) -> None:
    """The selected profile (params.yaml `profile`, SPECREC_PROFILE overrides) and where its stores are."""

    def run(cfg: Config) -> None:
        from specrec.tracking import tracking_uri

        source = "SPECREC_PROFILE" if os.environ.get("SPECREC_PROFILE") else "params.yaml"
        typer.echo(f"profile   {cfg.profile}  (from {source})")
        typer.echo(f"feast     {cfg.path(cfg.feast.repo) / cfg.feast_yaml}")
        if cfg.production:
            from specrec.services import endpoints

            for what, where in endpoints(cfg).rows():
                typer.echo(f"{what:<21} {where}")
        else:
            typer.echo(f"mlflow    {tracking_uri(cfg.root)}")
            typer.echo("prefect   the ephemeral or local server's SQLite (make flows: .prefect/)")

    _run(run, params)


lora_app = typer.Typer(
    help="Daily LoRA adapters on the FM and drift-triggered base retraining.", no_args_is_help=True
)
app.add_typer(lora_app, name="lora")
model_app = typer.Typer(help="Registered models: aliases.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@lora_app.command("run")
def lora_run(
    as_of: Annotated[
        str, typer.Option(help="The cycle's as_of (ISO date or time); 'first' = the clock's first cycle.")
    ],
    warm_start: Annotated[
        bool | None,
        typer.Option(
            "--warm-start/--no-warm-start", help="Start from the champion adapter (default: params)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run flow daily_lora_finetune: train, gate, register the cycle's adapter; ADWIN may retrain the base."""
    from flows.daily_lora_finetune import daily_lora_finetune

    def run(cfg: Config) -> None:
        out = daily_lora_finetune(
            as_of=_as_of(cfg, as_of), params=str(params.resolve()), warm_start=warm_start
        )
        cycle, drift = out["cycle"], out["drift"]
        typer.echo(
            f"as_of {cycle['as_of']}: {cycle['status']} ({cycle['reason']}); drift {drift['decision']}"
        )

    _run(run, params)


@lora_app.command("retrain-base")
def lora_retrain_base(
    as_of: Annotated[
        str, typer.Option(help="Train on events known at this instant (ISO); 'first' = cycle 1.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run flow retrain_base: a new specrec-fm on the events known at as_of, promoted only via the gate."""
    from flows.retrain_base import retrain_base

    def run(cfg: Config) -> None:
        out = retrain_base(as_of=_as_of(cfg, as_of), params=str(params.resolve()))
        typer.echo(
            f"specrec-fm v{out['version']}: {'promoted' if out['promoted'] else 'rejected'} ({out['reason']})"
        )

    _run(run, params)


@model_app.command("rollback")
def model_rollback(
    name: Annotated[str, typer.Option(help="Registered model whose champion alias moves back.")] = (
        "specrec-fm-adapter"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Move NAME@champion back to the version it replaced (the gate records it on promotion)."""

    def run(cfg: Config) -> None:
        import mlflow
        from specrec.lora.adapters import rollback
        from specrec.tracking import use_project_store

        use_project_store(cfg)
        old, new = rollback(mlflow.MlflowClient(), name)
        typer.echo(f"{name}@champion: v{old} -> v{new}")

    _run(run, params)


speculation_app = typer.Typer(help="Speculation: predictor and speculative precompute.", no_args_is_help=True)
app.add_typer(speculation_app, name="speculation")


@speculation_app.command("train")
def speculation_train(
    as_of: Annotated[
        str, typer.Option(help="Train on windows known at this instant; 'first' = the first cycle.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Fit, evaluate and register specrec-speculator (flow retrain_speculator); gate the champion."""
    from flows.retrain_speculator import retrain_speculator

    def run(cfg: Config) -> None:
        from specrec.clock import to_utc

        when = _as_of(cfg, as_of)
        to_utc(when)  # bad input ends here with one line, before a flow run starts
        out = retrain_speculator(as_of=when, params=str(params.resolve()))
        typer.echo(
            f"specrec-speculator v{out['version']}: coverage {out['coverage']:.3f}, precision "
            f"{out['precision']:.3f}, {'promoted' if out['promoted'] else 'rejected'} ({out['reason']})"
        )

    _run(run, params)


@speculation_app.command("precompute")
def speculation_precompute(
    as_of: Annotated[str, typer.Option(help="The window's start: only events before it are used.")],
    window: Annotated[str | None, typer.Option(help="Window length (default speculation.window).")] = None,
    users: Annotated[
        str | None,
        typer.Option(
            help="Event-triggered precompute for these users' events (comma-separated ids); "
            "--as-of is then the end of the micro-batch that saw them."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Precompute FM pair representations for a window (or users' events) into Feast `speculative` (flow)."""
    from flows.speculative_precompute import parse_users, speculative_precompute

    def run(cfg: Config) -> None:
        from specrec.clock import to_utc
        from specrec.config import parse_duration

        to_utc(as_of)  # bad input ends here with one line, before a flow run starts
        if window is not None:
            parse_duration("--window", window)
        ids = parse_users(users)
        out = speculative_precompute(as_of=as_of, window=window, params=str(params.resolve()), users=ids)
        typer.echo(f"speculative precompute at {out['as_of']}: {out['message']}")

    _run(run, params)


cycle_app = typer.Typer(
    help="The daily cycle: every flow for one as_of, in dependency order.", no_args_is_help=True
)
app.add_typer(cycle_app, name="cycle")


@cycle_app.command("run")
def cycle_run(
    as_of: Annotated[
        str, typer.Option(help="ISO date or time, 'first', or a cycle number N (its as_of on the clock).")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run flow run_cycle: events, LoRA, codebook, speculator, bundle, precompute (once per as_of)."""

    def run(cfg: Config) -> None:
        from specrec.replay.cycle import resolve_as_of

        when = resolve_as_of(cfg, as_of)  # bad input ends here with one line, before the heavy imports
        from flows.run_cycle import run_cycle

        out = run_cycle(as_of=when, params=str(params.resolve()))
        again = " (complete before: nothing run)" if out["reused"] else ""
        typer.echo(f"cycle {out['as_of']}: bundle {out['bundle_id']} v{out['bundle_version']}{again}")
        for step, outcome in out["steps"].items():
            typer.echo(f"  {step:<11} {outcome}")

    _run(run, params)


@app.command("replay")
def replay_cmd(
    cycles: Annotated[int, typer.Option(help="Cycles of the clock to run and replay, from the first.")] = 2,
    requests: Annotated[
        int | None, typer.Option(help="Requests per cycle at most (default replay.requests).")
    ] = None,
    rerun: Annotated[bool, typer.Option(help="Replay cycles that were replayed before again.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run N daily cycles; after each, send the next events to the real scorer; log to MLflow `replay`."""

    def run(cfg: Config) -> None:
        import dataclasses

        from specrec.replay.cycle import check_cycles

        check_cycles(cfg, cycles)  # bad input ends here with one line, before the heavy imports
        from specrec.replay.run import replay

        if requests is not None:
            cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, requests=requests))
        rows = replay(cfg, params.resolve(), cycles, rerun)
        runs = ", ".join(str(r["run_id"]) for r in rows)
        typer.echo(f"{len(rows)} cycles in MLflow experiment 'replay' (make mlflow-ui), runs {runs}")

    _run(run, params)


@app.command("report")
def report(
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (PNGs go beside it); default reports/report.html.")
    ] = None,
    mlflow_ui: Annotated[
        str | None,
        typer.Option(help="Base URL of the MLflow UI the page links to (default: make mlflow-ui's address)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write the HTML report (quality, speculation, latency, codebook, materialization, FM) from MLflow."""

    def run(cfg: Config) -> None:
        from specrec.report.build import build_report

        typer.echo(build_report(cfg, out, mlflow_ui).html)

    _run(run, params)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the parquet files and manifest.json.")] = Path(
        "data/synthetic"
    ),
    users: Annotated[int, typer.Option(help="Users (ids 1..users).")] = 10_000,
    items: Annotated[int, typer.Option(help="Catalogue size (ids 1..items, in release order).")] = 1_000,
    events_per_user: Annotated[float, typer.Option(help="Mean events per user (heavy-tailed).")] = 20.0,
    zipf_exponent: Annotated[float, typer.Option(help="Item popularity weight = rank ** -exponent.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed and settings, same files).")] = 0,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other SynthConfig field as NAME=VALUE, e.g. --set fresh_share=0.2."),
    ] = None,
) -> None:
    """Write a synthetic log (Zipf items, heavy users, sessions, arriving items) in the canonical schema."""

    def run() -> None:
        from specrec.data.synthetic import SynthConfig, with_settings, write

        base = SynthConfig(
            users=users, items=items, events_per_user=events_per_user, zipf_exponent=zipf_exponent, seed=seed
        )
        manifest = write(with_settings(base, settings or []), out)
        size_mb = sum(manifest["bytes"].values()) / 1e6
        typer.echo(
            f"{manifest['rows']:,} events, {users:,} users, {items:,} items in {manifest['seconds']} s: "
            f"{out}/ ({size_mb:.1f} MB); ingest with the data: settings in {out}/manifest.json"
        )

    from specrec.runtime import run_entry

    run_entry(run)


def main() -> None:
    """Console-script entry point."""
    app()
