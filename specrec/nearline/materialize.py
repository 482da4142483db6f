"""Materialize item representations of a bundle into Feast: offline history and online store.

Complete when the bundle is new (every item known at as_of), incremental when the bundle is already
complete (only items first seen since its last run). Rows are keyed by (item_id, bundle_id), so a new
bundle is written next to the serving one and `specrec-bundle@serving` moves only after the last row
is in (blue/green). A crash leaves the new bundle incomplete and unserved; a rerun rewrites the same
rows (upserts) and finishes. Batches are streamed, so memory is bounded by one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from specrec.clock import to_utc
from specrec.codebook.serving import BundleCodes
from specrec.config import Config
from specrec.errors import SpecrecError
from specrec.io import read_parquet, write_parquet
from specrec.nearline import bundles
from specrec.nearline.bundle_fm import bundle_fm
from specrec.nearline.store import offline_dir

if TYPE_CHECKING:
    from feast import FeatureStore

    from mlflow import MlflowClient
    from models.train import RecModel

log = logging.getLogger(__name__)

VIEW = "item_repr"
EXPERIMENT = "materialize"


@dataclass(frozen=True)
class MaterializeResult:
    """What one materialization did."""

    as_of: str
    bundle_id: str
    bundle_version: str
    mode: str  # complete | incremental | noop
    rows_written: int
    items_known: int
    seconds: float
    promoted: bool

    @property
    def rows_per_s(self) -> float:
        """Write throughput."""
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


def load_fm(version: str) -> RecModel:
    """The torch FM of a registered specrec-fm version."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(f"models:/specrec-fm/{version}").unwrap_python_model().model
    except Exception as exc:  # noqa: BLE001 - any load failure is the same problem for the user
        raise SpecrecError(
            f"cannot load models:/specrec-fm/{version} from the MLflow registry: {exc}. "
            "Check MLFLOW_TRACKING_URI, or retrain with `dvc repro train_fm`."
        ) from None
    return model.eval()


def history_file(when: pd.Timestamp, part: int | None = None, shard: tuple[int, int] | None = None) -> str:
    """The parquet history file of one write at `when`, named by the full timestamp (to the second), so
    several writes on the same day keep their own files; a rerun at the same as_of rewrites its own.
    A sharded write names its shard (index of count) too, so shards never overwrite each other's files."""
    stem = f"as_of={when.strftime('%Y-%m-%dT%H%M%S')}"
    if shard is not None:
        stem += f"-shard{shard[0]:05d}of{shard[1]:05d}"
    return f"{stem}.parquet" if part is None else f"{stem}-part{part:05d}.parquet"


def known_items(items: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Items whose first event is before as_of."""
    return items[items["first_seen"].notna() & (items["first_seen"] < as_of)]


def _codes(model: RecModel, item_idx: np.ndarray) -> list[np.ndarray]:
    """Semantic-ID codes of items as int64 arrays, empty when the model has no codebook."""
    codes = getattr(model.item_emb, "codes", None)
    if codes is None:
        return [np.zeros(0, dtype=np.int64) for _ in item_idx]
    return list(codes[torch.from_numpy(item_idx)].numpy().astype(np.int64))


def item_batches(
    model: RecModel,
    items: pd.DataFrame,
    bundle_id: str,
    as_of: pd.Timestamp,
    batch_rows: int,
    codes: BundleCodes | None = None,
) -> Iterator[pd.DataFrame]:
    """Rows of item_repr in batches: embeddings computed per batch from the model's item table;
    semantic IDs from the bundle's codebook when it has one."""
    with torch.no_grad():
        table = model.item_embeddings()  # (n_items+1, D), a view of the weights plus normalisation
    for start in range(0, len(items), batch_rows):
        part = items.iloc[start : start + batch_rows]
        idx = part["item_idx"].to_numpy(np.int64)
        emb = table[torch.from_numpy(idx)].numpy().astype(np.float32)  # (B, D)
        yield pd.DataFrame(
            {
                "item_id": part["item_id"].to_numpy(np.int64),
                "bundle_id": bundle_id,
                "embedding": list(emb),
                "semantic_id": codes.of(idx) if codes is not None else _codes(model, idx),
                "item_idx": idx,
                "event_timestamp": as_of,
            }
        )


def check_rows(frame: pd.DataFrame, dim: int) -> None:
    """Refuse NaN/inf or wrong-dimension embeddings, naming the items; nothing is written then."""
    emb = frame["embedding"]
    wrong_dim = emb.map(len) != dim
    bad = wrong_dim.copy()
    bad[~wrong_dim] = (
        ~np.isfinite(np.stack(emb[~wrong_dim].to_list())).all(axis=1) if (~wrong_dim).any() else False
    )
    if bad.any():
        _refuse(frame.loc[bad, "item_id"].tolist(), f" {dim}-vectors", "nothing of this batch was written")


def check_table(model: RecModel, items: pd.DataFrame) -> None:
    """Refuse the whole write when any item's embedding is not finite, naming the items (nothing written)."""
    with torch.no_grad():
        rows = model.item_embeddings()[torch.from_numpy(items["item_idx"].to_numpy(np.int64))]  # (N, D)
    bad = ~torch.isfinite(rows).all(dim=1).numpy()
    if bad.any():
        _refuse(items.loc[bad, "item_id"].tolist(), "", "nothing was written")


def _refuse(ids: list[int], shape: str, written: str) -> None:
    """The error for bad embeddings: how many, which items (first 20), what was written, what to do."""
    raise SpecrecError(
        f"{len(ids)} item embeddings are not finite{shape} "
        f"(item_id {ids[:20]}{' ...' if len(ids) > 20 else ''}); "
        f"{written}. The model produced bad values: check its checkpoint, then rerun."
    )


def write_batch(
    store: FeatureStore, frame: pd.DataFrame, history_path: Any, batch_rows: int, view: str = VIEW
) -> None:
    """Write one validated batch offline (parquet history) and online."""
    write_parquet(frame, history_path)
    try:
        from specrec.nearline.online_writer import write_online
    except ImportError:  # the fast writer is optional: Feast's own path is correct, only slower
        store.write_to_online_store(view, frame)
        return
    write_online(store, view, frame, batch_rows=batch_rows, progress=False)


@dataclass(frozen=True)
class ItemPlan:
    """What a write at as_of does: its mode, which items (first seen in [since, as_of); all known ones
    when `since` is None) and how many; decided once, before any row is written."""

    mode: str  # complete | incremental | noop
    since: str | None
    rows: int
    known: int


def plan_items(cfg: Config, as_of: object, bundle: bundles.Bundle, client: MlflowClient) -> ItemPlan:
    """The mode and the items to write: all known items for a new bundle, new items for a complete one."""
    assert bundle.version is not None
    when = to_utc(as_of)
    known = known_items(_items(cfg), when)
    tags = client.get_model_version(bundles.REGISTERED_MODEL, bundle.version).tags
    if tags.get("complete") != "true":
        return ItemPlan("complete", None, len(known), len(known))
    done = to_utc(tags["materialized_as_of"])
    if done >= when:
        return ItemPlan("noop", done.isoformat(), 0, len(known))
    return ItemPlan("incremental", done.isoformat(), int((known["first_seen"] >= done).sum()), len(known))


def _items(cfg: Config) -> pd.DataFrame:
    """The prepared item table."""
    return read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")


def todo_items(cfg: Config, as_of: object, plan: ItemPlan) -> pd.DataFrame:
    """The plan's items, in the item table's order (the order every shard cuts the same way)."""
    known = known_items(_items(cfg), to_utc(as_of))
    if plan.mode == "noop":
        return known.iloc[:0]
    return known if plan.since is None else known[known["first_seen"] >= to_utc(plan.since)]


def write_item_rows(
    cfg: Config,
    as_of: object,
    bundle: bundles.Bundle,
    store: FeatureStore,
    client: MlflowClient,
    plan: ItemPlan,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> int:
    """Write the plan's item rows (shard = (index, count): only that contiguous part of them); every item
    of the part is checked before its first row is written. Returns the rows written."""
    from specrec.sharding import ranges

    when = to_utc(as_of)
    todo = todo_items(cfg, when, plan)
    if shard is not None:
        parts = ranges(len(todo), shard[1])
        todo = todo.iloc[slice(*parts[shard[0]])] if shard[0] < len(parts) else todo.iloc[:0]
    if not len(todo):
        return 0
    fm = bundle_fm(cfg, client, bundle)  # base + adapter + code embeddings, as every writer sees it
    model, codes = fm.model, fm.codes
    dim = int(model.item_embeddings().shape[1])
    check_table(model, todo)  # every item checked before the first row is written
    folder = offline_dir(store, VIEW) / f"bundle={bundle.bundle_id}"
    batches = item_batches(model, todo, bundle.bundle_id, when, cfg.feast.write_batch_rows, codes)
    n_batches = -(-len(todo) // cfg.feast.write_batch_rows)
    written = 0
    for k, frame in enumerate(
        tqdm(batches, total=n_batches, desc=f"item_repr {bundle.bundle_id}", disable=not progress)
    ):
        check_rows(frame, dim)
        write_batch(store, frame, folder / history_file(when, k, shard), cfg.feast.write_batch_rows)
        written += len(frame)
    return written


def finish_items(
    client: MlflowClient,
    as_of: object,
    bundle: bundles.Bundle,
    plan: ItemPlan,
    written: int,
    started: float,
    before_serving: Callable[[bundles.Bundle], object] | None = None,
) -> MaterializeResult:
    """After every row of the plan is in: tag the bundle complete, run `before_serving`, then move serving
    to it if it is newer. The one step that makes a bundle visible, run once after all shards. `started` is
    this process's time.perf_counter() when the write began (the result's seconds run from there)."""
    when = to_utc(as_of)
    if plan.mode != "noop":
        tags = {"complete": "true", "materialized_as_of": when.isoformat(), "items": str(plan.known)}
        bundles.tag(client, bundle, **tags)
    if before_serving is not None and plan.mode != "noop":
        before_serving(bundle)
    promoted = _maybe_promote(client, bundle)
    result = MaterializeResult(
        when.isoformat(),
        bundle.bundle_id,
        str(bundle.version),
        plan.mode,
        written,
        plan.known,
        time.perf_counter() - started,
        promoted,
    )
    log.info("materialize item_repr: %s", asdict(result))
    return result


def materialize_items(
    cfg: Config,
    as_of: object,
    bundle: bundles.Bundle,
    store: FeatureStore,
    client: MlflowClient,
    progress: bool = True,
    before_serving: Callable[[bundles.Bundle], object] | None = None,
) -> MaterializeResult:
    """Write the bundle's item rows known at as_of; mark it complete; move serving to it if it is newer.

    `before_serving(bundle)` runs after the last item row and before the alias can move (the flow writes
    the bundle's user states there), so the scorer only ever swaps to a bundle whose rows are all in.
    """
    start = time.perf_counter()
    plan = plan_items(cfg, as_of, bundle, client)
    written = write_item_rows(cfg, as_of, bundle, store, client, plan, progress=progress)
    return finish_items(client, as_of, bundle, plan, written, start, before_serving)


def _maybe_promote(client: MlflowClient, bundle: bundles.Bundle) -> bool:
    """Move serving to the bundle when it is complete and newer than the serving one."""
    current = bundles.serving(client)
    if current is not None and int(current.version or 0) >= int(bundle.version or 0):
        return False
    bundles.promote_serving(client, bundle)
    return True


def log_run(
    cfg: Config,
    view: str,
    as_of: str,
    bundle_id: str,
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
) -> str | None:
    """Log one nearline write to MLflow `materialize` (run named by as_of), once per (view, as_of, bundle):
    a rerun of the same write adds no second run."""
    import mlflow
    from specrec.tracking import experiment_id

    exp = experiment_id(cfg.root, EXPERIMENT)
    query = f"tags.view = '{view}' and tags.as_of = '{as_of}' and tags.bundle_id = '{bundle_id}'"
    if mlflow.search_runs([exp], query, output_format="list"):
        return None
    with mlflow.start_run(experiment_id=exp, run_name=str(to_utc(as_of).date())) as run:
        mlflow.set_tags({"view": view, "as_of": as_of, "bundle_id": bundle_id, **(tags or {})})
        mlflow.log_metrics(metrics)
    return str(run.info.run_id)
