"""Typed, validated configuration, loaded once from params.yaml at an entry point and passed down.

Every section is a frozen dataclass. Unknown keys, missing keys, wrong types and out-of-range values are
rejected with a `ConfigError` that names the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import pandas as pd
import yaml

from specrec.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from specrec.errors import ConfigError, SpecrecError

SourceKind = Literal["movielens_csv", "movielens_archive", "sequence", "table"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
ARCHIVE_NAMES = ("ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small")
TIMESTAMP_UNITS = ("s", "ms", "us", "ns", "iso")
SEQUENCE_ALIGN = ("start", "end")  # data.sequence.align
LORA_SUPERVISE = ("new", "window")  # lora.supervise
LORA_TRAIN_SINCE = ("cycle", "base_cutoff")  # lora.train_since


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise a ConfigError for `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed)


def parse_timestamp(key: str, value: object) -> pd.Timestamp:
    """Parse a config date/time as UTC; naive values are taken to be UTC."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(
            key, value, "an ISO date or date-time such as 2018-01-01 or 2018-01-01T00:00Z"
        ) from None
    _require(not pd.isna(ts), key, value, "an ISO date or date-time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_duration(key: str, value: object) -> pd.Timedelta:
    """Parse a positive duration such as 1D, 7D, 12h or 10min."""
    try:
        td = pd.Timedelta(str(value))
    except (ValueError, TypeError):
        raise ConfigError(key, value, "a positive duration such as 1D, 7D, 12h or 10min") from None
    _require(td > pd.Timedelta(0), key, value, "a positive duration such as 1D, 7D, 12h or 10min")
    return td


@dataclass(frozen=True)
class PathsConfig:
    """Where each pipeline stage writes, relative to the project root (dvc.yaml reads the same keys)."""

    ingested: str = "data/ingested"
    quarantine: str = "data/quarantine"
    prepared: str = "data/prepared"
    split: str = "data/split"
    metrics: str = "data/metrics"
    fm: str = "data/models/fm"
    kv_cache: str = "data/kv_cache"


@dataclass(frozen=True)
class ArchiveConfig:
    """A MovieLens archive fetched from GroupLens (or a mirror) and verified by sha256."""

    name: str = "ml-1m"
    base_url: str = "https://files.grouplens.org/datasets/movielens/"
    sha256: str | None = None  # None: use the known checksum of `name`

    def __post_init__(self) -> None:
        _require(self.name in ARCHIVE_NAMES, "data.archive.name", self.name, f"one of {ARCHIVE_NAMES}")
        _require(
            self.base_url.startswith(("http://", "https://", "file://")),
            "data.archive.base_url",
            self.base_url,
            "an http(s):// or file:// URL ending in /",
        )
        if self.sha256 is not None:
            ok = len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256.lower())
            _require(ok, "data.archive.sha256", self.sha256, "64 hexadecimal characters, or null")


@dataclass(frozen=True)
class SequenceConfig:
    """The one-line-per-user format `user item item ...`; timestamps are synthesised, monotone per user."""

    start: str = "2000-01-01"
    step: str = "1D"
    align: str = "start"  # start: every user begins at `start` | end: every last event at one instant

    def __post_init__(self) -> None:
        parse_timestamp("data.sequence.start", self.start)
        parse_duration("data.sequence.step", self.step)
        _require(self.align in SEQUENCE_ALIGN, "data.sequence.align", self.align, f"one of {SEQUENCE_ALIGN}")


@dataclass(frozen=True)
class TableConfig:
    """Any csv/parquet interaction table (and optional item table) mapped onto the canonical columns."""

    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> column in the file
    timestamp_unit: str = "s"
    items_path: str | None = None
    item_columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.timestamp_unit in TIMESTAMP_UNITS,
            "data.table.timestamp_unit",
            self.timestamp_unit,
            f"one of {TIMESTAMP_UNITS}",
        )
        for key, allowed, mapping in (
            ("columns", INTERACTION_COLUMNS, self.columns),
            ("item_columns", ITEM_COLUMNS, self.item_columns),
        ):
            for name in mapping:
                _require(
                    name in allowed,
                    f"data.table.{key}.{name}",
                    mapping[name],
                    f"a mapping whose keys are canonical columns {allowed}",
                )


@dataclass(frozen=True)
class DataConfig:
    """Which loader reads the raw data, and from where."""

    source: str = "movielens_csv"
    path: str = "datasets/ml-latest-small"
    cache_dir: str = "data/downloads"
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    table: TableConfig = field(default_factory=TableConfig)

    def __post_init__(self) -> None:
        _require(self.source in SOURCE_KINDS, "data.source", self.source, f"one of {SOURCE_KINDS}")
        _require(bool(self.path), "data.path", self.path, "a file or directory path")


@dataclass(frozen=True)
class ValidateConfig:
    """Row-level checks at ingest; failing rows are quarantined, the stage fails only past the share."""

    rating_min: float = 0.5
    rating_max: float = 5.0
    timestamp_min: str = "1990-01-01"
    timestamp_max: str = "2030-01-01"
    max_quarantine_share: float = 0.05

    def __post_init__(self) -> None:
        _require(
            self.rating_min <= self.rating_max,
            "validate.rating_min",
            self.rating_min,
            f"a number not above validate.rating_max ({self.rating_max})",
        )
        lo = parse_timestamp("validate.timestamp_min", self.timestamp_min)
        hi = parse_timestamp("validate.timestamp_max", self.timestamp_max)
        _require(
            lo < hi,
            "validate.timestamp_min",
            self.timestamp_min,
            f"a date before validate.timestamp_max ({self.timestamp_max})",
        )
        _require(
            0.0 <= self.max_quarantine_share <= 1.0,
            "validate.max_quarantine_share",
            self.max_quarantine_share,
            "a share between 0.0 and 1.0",
        )


@dataclass(frozen=True)
class SplitConfig:
    """The offline leave-one-out view (the time split itself comes from `clock`)."""

    loo_min_events: int = 3  # a training prefix, a validation item and a test item

    def __post_init__(self) -> None:
        _require(
            3 <= self.loo_min_events <= 10_000,
            "split.loo_min_events",
            self.loo_min_events,
            "an integer between 3 and 10000",
        )


@dataclass(frozen=True)
class ClockConfig:
    """The replay clock: `cycles` cycles of length `cadence` starting at `start`."""

    start: str = "2018-01-01"
    cadence: str = "28D"
    cycles: int = 10

    def __post_init__(self) -> None:
        parse_timestamp("clock.start", self.start)
        parse_duration("clock.cadence", self.cadence)
        _require(1 <= self.cycles <= 100_000, "clock.cycles", self.cycles, "an integer between 1 and 100000")


MODEL_KINDS = ("hstu", "sasrec")
LOSSES = ("full_ce", "sampled_softmax")
LR_SCHEDULES = ("constant", "linear")  # models.lora.LR_SCHEDULES (config does not import torch)


@dataclass(frozen=True)
class FMTrainConfig:
    """Optimisation of the foundation model (see models.train.TrainConfig for each field's meaning)."""

    loss: str = "full_ce"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    time_budget_s: float | None = 300.0
    seed: int = 0
    n_uniform_negatives: int = 512
    n_inbatch_negatives: int = 512
    pair_loss_weight: float = 0.0
    pair_negatives: int = 4
    pair_negatives_from: str = "batch"
    pair_hard_pool: int = 200
    pair_cuts: int = 1
    random_windows: bool = False

    def __post_init__(self) -> None:
        _require(self.loss in LOSSES, "fm.train.loss", self.loss, f"one of {LOSSES}")
        ok = isinstance(self.random_windows, bool)
        _require(ok, "fm.train.random_windows", self.random_windows, "true or false")
        _require(0 < self.lr <= 1, "fm.train.lr", self.lr, "a learning rate in (0, 1]")
        _require(self.weight_decay >= 0, "fm.train.weight_decay", self.weight_decay, "a number >= 0")
        _require(
            1 <= self.batch_size <= 65_536, "fm.train.batch_size", self.batch_size, "an integer in [1, 65536]"
        )
        _require(1 <= self.max_epochs <= 100_000, "fm.train.max_epochs", self.max_epochs, "an integer >= 1")
        _require(1 <= self.patience <= 100_000, "fm.train.patience", self.patience, "an integer >= 1")
        _require(
            self.time_budget_s is None or self.time_budget_s > 0,
            "fm.train.time_budget_s",
            self.time_budget_s,
            "a positive number of seconds, or null for no budget",
        )
        _require(
            self.n_uniform_negatives >= 0,
            "fm.train.n_uniform_negatives",
            self.n_uniform_negatives,
            "an integer >= 0",
        )
        _require(
            self.n_inbatch_negatives >= 0,
            "fm.train.n_inbatch_negatives",
            self.n_inbatch_negatives,
            "an integer >= 0",
        )
        _require(
            self.pair_loss_weight >= 0, "fm.train.pair_loss_weight", self.pair_loss_weight, "a number >= 0"
        )
        _require(self.pair_negatives >= 1, "fm.train.pair_negatives", self.pair_negatives, "an integer >= 1")
        _require(
            self.pair_negatives_from in ("batch", "retrieval"),
            "fm.train.pair_negatives_from",
            self.pair_negatives_from,
            "batch or retrieval",
        )
        _require(
            self.pair_hard_pool >= self.pair_negatives,
            "fm.train.pair_hard_pool",
            self.pair_hard_pool,
            f"an integer >= pair_negatives ({self.pair_negatives})",
        )
        _require(1 <= self.pair_cuts <= 256, "fm.train.pair_cuts", self.pair_cuts, "an integer in [1, 256]")


@dataclass(frozen=True)
class FMConfig:
    """The foundation model's architecture (models.hstu.HSTUConfig / models.sasrec.SASRecConfig fields)."""

    model: str = "hstu"
    max_len: int = 200
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    time_buckets: int = 64
    l2_norm: bool = True
    temperature: float = 0.05
    pair_gate: bool = False  # HSTU: the candidate output enters the pair vector through a learned weight
    train: FMTrainConfig = field(default_factory=FMTrainConfig)
    # a challenger becomes specrec-fm@champion only when its validation score beats the champion's
    promote_metric: str = "ndcg@10"

    def __post_init__(self) -> None:
        _require(self.model in MODEL_KINDS, "fm.model", self.model, f"one of {MODEL_KINDS}")
        _require(1 <= self.max_len <= 4096, "fm.max_len", self.max_len, "an integer in [1, 4096]")
        _require(1 <= self.dim <= 4096, "fm.dim", self.dim, "an integer in [1, 4096]")
        _require(1 <= self.n_layers <= 64, "fm.n_layers", self.n_layers, "an integer in [1, 64]")
        _require(
            self.n_heads >= 1 and self.dim % self.n_heads == 0,
            "fm.n_heads",
            self.n_heads,
            f"a positive divisor of fm.dim ({self.dim})",
        )
        _require(0 <= self.dropout < 1, "fm.dropout", self.dropout, "a probability in [0, 1)")
        _require(
            1 <= self.time_buckets <= 4096, "fm.time_buckets", self.time_buckets, "an integer in [1, 4096]"
        )
        _require(self.temperature > 0, "fm.temperature", self.temperature, "a number > 0")
        metrics = tuple(f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 50, 200)) + ("mrr",)
        _require(
            self.promote_metric in metrics, "fm.promote_metric", self.promote_metric, f"one of {metrics}"
        )

    def model_config(self, n_items: int) -> dict[str, Any]:
        """Keyword arguments of the chosen model's config class."""
        arch: dict[str, Any] = {
            "n_items": n_items,
            "max_len": self.max_len,
            "dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "dropout": self.dropout,
            "l2_norm": self.l2_norm,
            "temperature": self.temperature,
        }
        hstu = {"time_buckets": self.time_buckets, "pair_gate": self.pair_gate}
        return arch | (hstu if self.model == "hstu" else {})


@dataclass(frozen=True)
class ScorerTrainConfig:
    """The thin online scorer and its distillation from the FM."""

    candidates: int = 100  # retrieved candidates per training example (the teacher scores all of them)
    max_examples: int = 3000  # examples at most (users newest first, each user's newest events)
    events_per_user: int = 5  # each user's newest events that become examples (each with its own history)
    holdout_share: float = 0.2  # examples kept out of training for the promotion gate
    hidden: int = 64
    epochs: int = 30
    lr: float = 0.003
    hit_rate: float = 0.5  # simulated share of candidates with a precomputed FM pair representation
    base: str = "fm"  # the score the MLP corrects: fm (the FM's logit: its pair score on hits) | dot (u.e)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(
            1 <= self.candidates <= 10_000, "scorer.candidates", self.candidates, "an integer in [1, 10000]"
        )
        _require(
            10 <= self.max_examples <= 10_000_000,
            "scorer.max_examples",
            self.max_examples,
            "an integer >= 10",
        )
        _require(
            1 <= self.events_per_user <= 1000,
            "scorer.events_per_user",
            self.events_per_user,
            "an integer in [1, 1000]",
        )
        _require(0 < self.holdout_share < 1, "scorer.holdout_share", self.holdout_share, "a share in (0, 1)")
        _require(1 <= self.hidden <= 4096, "scorer.hidden", self.hidden, "an integer in [1, 4096]")
        _require(1 <= self.epochs <= 10_000, "scorer.epochs", self.epochs, "an integer in [1, 10000]")
        _require(0 < self.lr <= 1, "scorer.lr", self.lr, "a learning rate in (0, 1]")
        _require(0 <= self.hit_rate <= 1, "scorer.hit_rate", self.hit_rate, "a share in [0, 1]")
        _require(self.base in ("dot", "fm"), "scorer.base", self.base, "dot or fm")


LORA_METRICS = ("ndcg@10", "hr@10")


@dataclass(frozen=True)
class LoraDriftConfig:
    """ADWIN (river.drift.ADWIN) over the per-event holdout error of each cycle; an alarm retrains
    the base."""

    delta: float = 0.002  # ADWIN confidence: smaller = fewer false alarms, slower detection
    clock: int = 1  # check for a change after every `clock` values (river's default 32 suits long streams)
    min_window_length: int = 5  # smallest sub-window ADWIN compares
    grace_period: int = 30  # values seen before the first check
    state: str = "data/lora/drift.json"  # the detector's window and per-cycle decisions, kept across runs

    def __post_init__(self) -> None:
        _require(0 < self.delta < 1, "lora.drift.delta", self.delta, "a confidence in (0, 1)")
        _require(1 <= self.clock <= 10_000, "lora.drift.clock", self.clock, "an integer in [1, 10000]")
        _require(
            1 <= self.min_window_length <= 100_000,
            "lora.drift.min_window_length",
            self.min_window_length,
            "an integer >= 1",
        )
        _require(
            0 <= self.grace_period <= 1_000_000,
            "lora.drift.grace_period",
            self.grace_period,
            "an integer >= 0",
        )
        _require(bool(self.state), "lora.drift.state", self.state, "a file path")


@dataclass(frozen=True)
class LoraFinetuneConfig:
    """The daily LoRA adapter on specrec-fm@champion and its gate (specrec/lora,
    flows/daily_lora_finetune)."""

    target_modules: list[str] = field(default_factory=lambda: ["f1", "f2"])  # HSTU layer linears
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator (update scale = alpha / r)
    dropout: float = 0.05  # dropout on the LoRA branch input
    new_item_rows: bool = True  # items first seen after the base's cutoff get trainable embedding rows
    # also every item of the cycle's training events (older ones too): the update can move the embeddings
    # of items that got new interactions, which a retrain from scratch does and layer adapters cannot
    cycle_item_rows: bool = False
    # new: the cycle's new events are the only targets of their windows | window: every position of those
    # windows is (the users' earlier events too, as in the base's training)
    supervise: str = "new"
    # cycle: the new events are the cycle's | base_cutoff: every event since the base's training cutoff
    # (the adapter then sees all that the base has not, however many cycles ago it was trained; replay
    # and validation users are drawn relative to the same start)
    train_since: str = "cycle"
    replay_share: float = 0.5  # share of training targets drawn from older history (experience replay)
    min_events: int = 50  # a cycle with fewer new training events is skipped, with the reason logged
    holdout_share: float = 0.2  # the newest share of the cycle's events: the gate's holdout
    epochs: int = 5  # with val_share > 0: the most epochs (early stopping on the validation users)
    # share of the users with new training events whose new events are held out of training and score
    # each epoch (NDCG@10); the adapter of the best epoch is kept, training stops after `patience` epochs
    # without a better one. 0: no validation, always `epochs` epochs
    val_share: float = 0.0
    patience: int = 1
    lr: float = 0.003
    weight_decay: float = 0.0
    batch_size: int = 32  # windows per batch (with batch_by_length: that many random windows' targets)
    # batches of windows of similar length, cut by supervised targets (less padding; models.lora.batches)
    batch_by_length: bool = False
    # the update's next-item loss: full_ce (softmax over every item, as the base trains) | sampled_softmax
    # (the target against fm.train's in-batch and uniform negatives: a cheaper step, so more epochs fit)
    loss: str = "full_ce"
    # constant | linear: lr decays linearly to 0 over `epochs` epochs' steps (an early stop ends it sooner)
    lr_schedule: str = "constant"
    warm_start: bool = True  # start from the champion adapter when it was trained on the same base
    promote_metric: str = "ndcg@10"
    tolerance: float = 0.0  # the challenger is promoted when its holdout score > champion's - tolerance
    seed: int = 0
    drift: LoraDriftConfig = field(default_factory=LoraDriftConfig)

    def __post_init__(self) -> None:
        _require(
            len(self.target_modules) > 0 and all(bool(m) for m in self.target_modules),
            "lora.target_modules",
            self.target_modules,
            "a non-empty list of module names, e.g. [f1, f2] (the HSTU layer linears)",
        )
        _require(1 <= self.r <= 1024, "lora.r", self.r, "an integer in [1, 1024]")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "a number > 0")
        _require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "a probability in [0, 1)")
        _require(0 <= self.replay_share < 1, "lora.replay_share", self.replay_share, "a share in [0, 1)")
        ok = self.supervise in LORA_SUPERVISE
        _require(ok, "lora.supervise", self.supervise, f"one of {LORA_SUPERVISE}")
        ok = self.train_since in LORA_TRAIN_SINCE
        _require(ok, "lora.train_since", self.train_since, f"one of {LORA_TRAIN_SINCE}")
        _require(1 <= self.min_events <= 10_000_000, "lora.min_events", self.min_events, "an integer >= 1")
        _require(0 < self.holdout_share < 1, "lora.holdout_share", self.holdout_share, "a share in (0, 1)")
        _require(self.loss in LOSSES, "lora.loss", self.loss, f"one of {LOSSES}")
        ok = self.lr_schedule in LR_SCHEDULES
        _require(ok, "lora.lr_schedule", self.lr_schedule, f"one of {LR_SCHEDULES}")
        _require(1 <= self.epochs <= 10_000, "lora.epochs", self.epochs, "an integer in [1, 10000]")
        _require(0 <= self.val_share < 0.5, "lora.val_share", self.val_share, "a share in [0, 0.5)")
        _require(1 <= self.patience <= 10_000, "lora.patience", self.patience, "an integer >= 1")
        _require(0 < self.lr <= 1, "lora.lr", self.lr, "a learning rate in (0, 1]")
        _require(self.weight_decay >= 0, "lora.weight_decay", self.weight_decay, "a number >= 0")
        _require(
            1 <= self.batch_size <= 65_536, "lora.batch_size", self.batch_size, "an integer in [1, 65536]"
        )
        _require(
            self.promote_metric in LORA_METRICS,
            "lora.promote_metric",
            self.promote_metric,
            f"one of {LORA_METRICS}",
        )
        _require(0 <= self.tolerance < 1, "lora.tolerance", self.tolerance, "a number in [0, 1)")


REQUEST_STATES = ("window", "event")
TRIGGERS = ("window", "event")


@dataclass(frozen=True)
class SpeculationConfig:
    """The speculation predictor, the speculative precompute of FM pair representations and its replay."""

    window: str = "5min"  # precompute cadence in event time; what a window's start knows is all it uses
    ttl: str = "24h"  # a precomputed row is a miss after computed_at + ttl (at most the Feast view's ttl)
    candidates: int = 200  # N: retrieved candidates per request; a request serves (user, c) for each
    max_rank: int = 400  # retrieval ranks considered ahead per predicted user (>= candidates)
    budget: int = 1000  # max FM pair evaluations per window
    budgets: list = field(default_factory=lambda: [50, 100, 200, 500, 1000])  # the coverage curve
    min_p_active: float = 0.1  # users less likely than this to return within the ttl are not precomputed
    activity_horizon: str = "7d"  # users whose last event is older are not candidates (P = 0)
    session_gap: str = "30min"  # a gap longer than this starts a new session
    train_days: int = 365  # windows of this many days before the evaluation span train the predictor
    eval_days: int = 28  # the newest days before as_of: the evaluation span (held out from training)
    hidden: int = 32  # activity MLP width
    epochs: int = 8
    lr: float = 0.003
    batch_users: int = 16  # users per FM pair-representation batch in the precompute
    batch_retries: int = 2  # a failing FM batch is retried this many times, then nothing is written
    request_state: str = "window"  # window: requests use the nearline user state of their window start
    # window: precompute only at window starts; event: also after each of a user's events (per-second
    # micro-batches), with the history through that event, readable event_delay later (within the budget)
    trigger: str = "event"
    event_delay: str = "2s"  # from an event to its triggered row being readable in the online store
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("window", "ttl", "activity_horizon", "session_gap", "event_delay"):
            parse_duration(f"speculation.{key}", getattr(self, key))
        _require(
            parse_duration("speculation.ttl", self.ttl) >= parse_duration("speculation.window", self.window),
            "speculation.ttl",
            self.ttl,
            f"a duration at least speculation.window ({self.window})",
        )
        _require(
            1 <= self.candidates <= 10_000,
            "speculation.candidates",
            self.candidates,
            "an integer in [1, 10000]",
        )
        _require(
            self.candidates <= self.max_rank <= 10_000,
            "speculation.max_rank",
            self.max_rank,
            f"an integer in [speculation.candidates ({self.candidates}), 10000]",
        )
        _require(self.budget >= 1, "speculation.budget", self.budget, "an integer >= 1")
        ok = bool(self.budgets) and all(isinstance(b, int) and b >= 1 for b in self.budgets)
        _require(ok, "speculation.budgets", self.budgets, "a non-empty list of integers >= 1")
        _require(
            0 <= self.min_p_active < 1, "speculation.min_p_active", self.min_p_active, "a share in [0, 1)"
        )
        _require(self.train_days >= 1, "speculation.train_days", self.train_days, "an integer >= 1")
        _require(self.eval_days >= 1, "speculation.eval_days", self.eval_days, "an integer >= 1")
        _require(1 <= self.hidden <= 4096, "speculation.hidden", self.hidden, "an integer in [1, 4096]")
        _require(1 <= self.epochs <= 1000, "speculation.epochs", self.epochs, "an integer in [1, 1000]")
        _require(0 < self.lr <= 1, "speculation.lr", self.lr, "a learning rate in (0, 1]")
        _require(self.batch_users >= 1, "speculation.batch_users", self.batch_users, "an integer >= 1")
        _require(0 <= self.batch_retries <= 10, "speculation.batch_retries", self.batch_retries, "0..10")
        _require(
            self.request_state in REQUEST_STATES,
            "speculation.request_state",
            self.request_state,
            f"one of {REQUEST_STATES}",
        )
        _require(self.trigger in TRIGGERS, "speculation.trigger", self.trigger, f"one of {TRIGGERS}")
        delay = parse_duration("speculation.event_delay", self.event_delay)
        _require(
            pd.Timedelta("1s") <= delay < parse_duration("speculation.ttl", self.ttl),
            "speculation.event_delay",
            self.event_delay,
            f"a duration of at least 1s (events are timed to the second), below speculation.ttl ({self.ttl})",
        )


@dataclass(frozen=True)
class CodebookDriftConfig:
    """When codebook_refresh retrains: drift of the items coded since the codebook was trained."""

    min_items: int = 50  # below this many new items drift is not judged (too few to measure)
    max_recon_ratio: float = 1.5  # new items' reconstruction error / the reference items'
    min_utilisation_ratio: float = 0.6  # new items' distinct codes / expected for as many reference items
    min_entropy_ratio: float = 0.8  # new items' code entropy / expected for as many reference items
    max_new_share: float = 0.25  # items coded since training / items the codebook was trained on
    retrain_on_fm_change: bool = True  # the FM champion moved: collaborative inputs are from another FM

    def __post_init__(self) -> None:
        _require(self.min_items >= 1, "codebook.drift.min_items", self.min_items, "an integer >= 1")
        _require(
            self.max_recon_ratio > 0, "codebook.drift.max_recon_ratio", self.max_recon_ratio, "a number > 0"
        )
        for key in ("min_utilisation_ratio", "min_entropy_ratio"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"codebook.drift.{key}", value, "a ratio in [0, 1]")
        _require(self.max_new_share > 0, "codebook.drift.max_new_share", self.max_new_share, "a number > 0")


@dataclass(frozen=True)
class CodebookConfig:
    """The RQ-VAE semantic-ID codebook (models/codebook.py) and its refresh (flows/codebook_refresh.py)."""

    text_cache: str = "data/item_text"  # item_text_embed: MiniLM content embeddings of titles + genres
    out: str = "data/models/codebook"  # codebook: the initial codebook folder
    levels: int = 3  # L semantic levels
    codebook_size: int = 64  # K codes per level
    latent_dim: int = 32
    hidden: int = 256  # encoder widths hidden, hidden/2 (the decoder mirrors them)
    collab_weight: float = 1.0  # scale of the FM item embedding against the unit-norm content embedding
    modality_dropout: float = 0.3  # training: share of items shown with one modality hidden
    epochs: int = 80
    batch_size: int = 256
    lr: float = 0.001
    commitment_weight: float = 0.25
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0  # codes used by fewer items (EMA) are re-seeded from the batch
    text_batch_size: int = 128
    stability_prefix: int = 2  # stability: share of items whose first stability_prefix codes changed
    promote_metric: str = "recon_error"  # the gate: lower on the catalogue known at as_of wins
    seed: int = 0
    drift: CodebookDriftConfig = field(default_factory=CodebookDriftConfig)

    def __post_init__(self) -> None:
        _require(1 <= self.levels <= 8, "codebook.levels", self.levels, "an integer in [1, 8]")
        _require(2 <= self.codebook_size <= 65_536, "codebook.codebook_size", self.codebook_size, "2..65536")
        _require(1 <= self.latent_dim <= 4096, "codebook.latent_dim", self.latent_dim, "1..4096")
        _require(2 <= self.hidden <= 8192, "codebook.hidden", self.hidden, "an integer in [2, 8192]")
        _require(self.collab_weight >= 0, "codebook.collab_weight", self.collab_weight, "a number >= 0")
        _require(
            0 <= self.modality_dropout < 1,
            "codebook.modality_dropout",
            self.modality_dropout,
            "a share in [0, 1)",
        )
        _require(1 <= self.epochs <= 100_000, "codebook.epochs", self.epochs, "an integer >= 1")
        _require(1 <= self.batch_size <= 1_000_000, "codebook.batch_size", self.batch_size, "an integer >= 1")
        _require(0 < self.lr <= 1, "codebook.lr", self.lr, "a learning rate in (0, 1]")
        _require(self.commitment_weight >= 0, "codebook.commitment_weight", self.commitment_weight, ">= 0")
        _require(1 <= self.kmeans_iters <= 1000, "codebook.kmeans_iters", self.kmeans_iters, "1..1000")
        _require(
            self.dead_code_threshold >= 0, "codebook.dead_code_threshold", self.dead_code_threshold, ">= 0"
        )
        _require(
            self.text_batch_size >= 1, "codebook.text_batch_size", self.text_batch_size, "an integer >= 1"
        )
        _require(
            1 <= self.stability_prefix <= self.levels,
            "codebook.stability_prefix",
            self.stability_prefix,
            f"an integer in [1, codebook.levels ({self.levels})]",
        )
        _require(
            self.promote_metric == "recon_error",
            "codebook.promote_metric",
            self.promote_metric,
            "recon_error",
        )


@dataclass(frozen=True)
class ReplayConfig:
    """`specrec replay`: how much of each cycle's next events is sent to the scorer, and how."""

    requests: int = 200  # POST /recommend calls per cycle at most (whole speculation windows, seeded sample)
    k: int = 10  # items asked for per request (HR/NDCG are @k)
    precompute: bool = True  # run user_state + speculative_precompute at each replayed window's start
    seed: int = 0

    def __post_init__(self) -> None:
        _require(1 <= self.requests <= 1_000_000, "replay.requests", self.requests, "an integer in [1, 1e6]")
        _require(1 <= self.k <= 1000, "replay.k", self.k, "an integer in [1, 1000]")


DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://")


@dataclass(frozen=True)
class DaskConfig:
    """Where item materialization and speculative precompute run: in-process, or sharded over Dask."""

    address: str | None = None  # null: in-process (no Dask) | local: a LocalCluster here | tcp://host:8786
    shards: int = 4  # Prefect tasks per write: items (materialization) or users (precompute) split this way
    n_workers: int = 2  # LocalCluster workers (address: local)
    threads_per_worker: int = 1
    processes: bool = True  # LocalCluster workers as processes (false: threads of the flow's process)

    def __post_init__(self) -> None:
        ok = self.address is None or self.address == "local" or self.address.startswith(DASK_SCHEMES)
        allowed = f"null, local, or a scheduler address such as tcp://host:8786 ({', '.join(DASK_SCHEMES)})"
        _require(ok, "dask.address", self.address, allowed)
        _require(1 <= self.shards <= 100_000, "dask.shards", self.shards, "an integer in [1, 100000]")
        _require(1 <= self.n_workers <= 1024, "dask.n_workers", self.n_workers, "an integer in [1, 1024]")
        _require(
            1 <= self.threads_per_worker <= 256,
            "dask.threads_per_worker",
            self.threads_per_worker,
            "an integer in [1, 256]",
        )


PROFILES = ("embedded", "production")
PROFILE_ENV = "SPECREC_PROFILE"  # the one switch between the profiles


@dataclass(frozen=True)
class FeastConfig:
    """Which Feast repo configuration to use, and how nearline writes are batched."""

    repo: str = "features"
    write_batch_rows: int = 50_000
    keep_bundles: int = 2  # online rows of older bundles are deleted once this many newer ones are complete

    def __post_init__(self) -> None:
        _require(
            1 <= self.write_batch_rows <= 10_000_000,
            "feast.write_batch_rows",
            self.write_batch_rows,
            "an integer in [1, 10000000]",
        )
        _require(
            1 <= self.keep_bundles <= 100, "feast.keep_bundles", self.keep_bundles, "an integer in [1, 100]"
        )


@dataclass(frozen=True)
class ServicesConfig:
    """Where the production profile's servers are. Each null falls back to an environment variable, then
    to what `make services` starts on loopback (specrec.services.endpoints resolves them)."""

    redis: str | None = None  # Feast online store, host:port[,db=N] (env SPECREC_REDIS)
    feast_registry_url: str | None = None  # Feast SQL registry (env SPECREC_FEAST_REGISTRY_URL)
    mlflow_tracking_uri: str | None = None  # MLflow tracking + registry (env MLFLOW_TRACKING_URI)
    artifact_root: str | None = None  # MLflow artifacts: a folder or s3://... (env SPECREC_ARTIFACT_ROOT)
    prefect_database_url: str | None = None  # Prefect server (env PREFECT_API_DATABASE_CONNECTION_URL)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    profile: str = "embedded"  # embedded: SQLite + files | production: Redis + PostgreSQL (SPECREC_PROFILE)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    fm: FMConfig = field(default_factory=FMConfig)
    feast: FeastConfig = field(default_factory=FeastConfig)
    scorer: ScorerTrainConfig = field(default_factory=ScorerTrainConfig)
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)
    lora: LoraFinetuneConfig = field(default_factory=LoraFinetuneConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    root: Path = field(default=Path("."), metadata={"internal": True})

    def __post_init__(self) -> None:
        _require(self.profile in PROFILES, "profile", self.profile, f"one of {PROFILES}")

    @property
    def production(self) -> bool:
        """Whether the production profile (Redis, PostgreSQL) is selected."""
        return self.profile == "production"

    @property
    def feast_yaml(self) -> str:
        """The feature_store yaml of the profile."""
        return "feature_store.production.yaml" if self.production else "feature_store.yaml"

    def path(self, relative: str) -> Path:
        """Resolve a configured path against the project root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p


T = TypeVar("T")


def _type_ok(value: object, tp: Any) -> bool:
    """Whether a YAML value fits a (simple) annotated type."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    """A short human name for an annotated type."""
    names = {str: "a string", int: "an integer", float: "a number", type(None): "null"}
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return "a list of strings"
    if get_origin(tp) is dict:
        return "a mapping of names to strings"
    return names.get(tp, str(tp))


def build(cls: type[T], raw: object, prefix: str) -> T:
    """Build dataclass `cls` from a YAML mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(prefix or "<top level>", raw, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{prefix}{key}",
                raw[key],
                f"a known key of {prefix.rstrip('.') or 'params'}: {sorted(fields)}",
            )
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in raw:
            continue
        tp, value, key = hints[name], raw[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{key}.")  # type: ignore[arg-type]
        elif _type_ok(value, tp):
            floaty = tp is float or (
                float in get_args(tp) and isinstance(value, int) and not isinstance(value, bool)
            )
            kwargs[name] = str(value) if tp is str else (float(value) if floaty else value)
        else:
            raise ConfigError(key, value, _describe(tp))
    return cls(**kwargs)


def load_config(params: str | Path = "params.yaml") -> Config:
    """Load and validate params.yaml; the project root is the file's directory."""
    path = Path(params)
    if not path.is_file():
        raise SpecrecError(
            f"params file {str(path)!r} not found; run from the project root or pass --params PATH."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecrecError(f"params file {str(path)!r} is not valid YAML: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("feast"), dict) and "profile" in raw["feast"]:
        moved = "nothing here: the profile moved to the top-level `profile:` key (or SPECREC_PROFILE)"
        raise ConfigError("feast.profile", raw["feast"]["profile"], moved)
    cfg = build(Config, raw, "")
    switch = os.environ.get(PROFILE_ENV)
    if switch:  # the one switch: the environment overrides params.yaml
        if switch not in PROFILES:
            raise SpecrecError(f"{PROFILE_ENV}={switch!r} is not a profile; set it to one of {PROFILES}.")
        cfg = dataclasses.replace(cfg, profile=switch)
    return dataclasses.replace(cfg, root=path.resolve().parent)
