"""The online scorer (FastAPI): the AIF request path over materialized features.

Per request, two branches run concurrently: the user side reads the user's fresh `user_state` and
`speculative` rows from Feast (under a deadline), while retrieval searches the serving bundle's item
index with the user's snapshot vector. The thin scorer then ranks the candidates from the user vector,
item embeddings, item stats and, on speculative hits, the FM pair representations. Sequential mode
(retrieval, then the user side) exists for comparison. The serving bundle is watched in MLflow and
swapped atomically. A slow or unreachable store gives a degraded answer, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import numbers
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from specrec.online.serving_state import ServingState, score

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

MAX_K = 1000
IO_WORKERS = 8
# After a store error or timeout, requests answer degraded without touching the store for this long;
# then the next request probes it again. Reads stuck on a dead store never pile up behind new ones.
BREAKER_COOLDOWN_S = 0.5
READY_TIMEOUT_S = 1.0
MAX_ITEMS = 1000
USER_FEATURES = [
    "user_state:state",
    "user_state:recent_items",
    "speculative:item_ids",
    "speculative:pair_repr",
    "speculative:expires_at",
]


def _whole(value: object) -> object:
    """JSON Schema's integer: 5.0 is the integer 5 (and so is NumPy's 5, from Python callers); "5" and
    true stay what they are (and are refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


# Strict models: "5" is not an id and 1 is not a boolean, as in the OpenAPI schema; unknown fields are
# refused, not ignored (a misspelt `exclude_seen` would otherwise silently change the answer).
STRICT = ConfigDict(strict=True, extra="forbid")
Int = Annotated[int, BeforeValidator(_whole)]
# No upper bound: an id past int64 is simply unknown (no bound can be checked exactly by clients that
# compare JSON numbers as doubles, as the fuzzer's validator does). The constraint goes first, so that
# it appears in the OpenAPI schema.
Id = Annotated[int, Field(ge=0), BeforeValidator(_whole)]


class RecommendRequest(BaseModel):
    """POST /recommend."""

    model_config = STRICT

    user_id: Int = Field(ge=0, description="The user to recommend for.")
    k: Int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out the user's recent items.")


class ScoreRequest(BaseModel):
    """POST /score."""

    model_config = STRICT

    user_id: Int = Field(ge=0)
    item_ids: list[Id] = Field(
        min_length=1, max_length=MAX_ITEMS, description="Items to score (at most 1000)."
    )


class RecommendResponse(BaseModel):
    """The answer of POST /recommend."""

    items: list[int] = Field(description="Item ids, best first.")
    scores: list[float | None] = Field(description="Their scores (null for a cold-start answer).")
    bundle_id: str = Field(description="The bundle that produced the answer.")
    cold_start: bool = Field(description="The user is unknown to the bundle: recent popularity.")
    degraded: bool = Field(description="The online store did not answer in time: fallback path.")
    speculative_hits: int = Field(description="Candidates scored with a precomputed FM pair.")


class ScoreResponse(BaseModel):
    """The answer of POST /score."""

    scores: dict[str, float] = Field(description="item id -> score, for the known items.")
    unknown_items: list[int] = Field(description="Requested items the serving bundle does not have.")
    bundle_id: str
    cold_start: bool
    degraded: bool


class ErrorResponse(BaseModel):
    """The answer to a body that cannot be read (not UTF-8, say)."""

    detail: str


class ReadyResponse(BaseModel):
    """The answer of GET /readyz (status 200 when ready, 503 when not)."""

    ready: bool
    bundle_id: str


# Every status an endpoint can answer is in the OpenAPI schema (the fuzz test checks answers against it).
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be read (e.g. not UTF-8)."}
}


def _json(body: dict[str, Any]) -> Response:
    """A JSON response serialised by orjson (the answer is built by us; nothing to validate)."""
    try:
        content = orjson.dumps(body)
    except orjson.JSONEncodeError:  # an unknown id past 64 bits echoed back: the stdlib has no int limit
        content = json.dumps(body).encode()
    return Response(content, media_type="application/json")


@dataclass
class UserSide:
    """What the user-side branch found."""

    vector: np.ndarray | None
    seen: set[int]
    pairs: dict[int, np.ndarray]
    degraded: bool


class Metrics:
    """Prometheus metrics of one service instance (own registry, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
        self.stage = Histogram(
            "specrec_stage_seconds",
            "Latency per request stage",
            ["stage"],
            buckets=buckets,
            registry=self.registry,
        )
        self.speculative = Counter(
            "specrec_speculative_total",
            "Candidates by speculative outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "specrec_fallbacks_total", "Degraded or cold-start answers", ["reason"], registry=self.registry
        )
        self.bundle = Gauge(
            "specrec_serving_bundle_info",
            "The bundle being served",
            ["bundle_id", "version"],
            registry=self.registry,
        )


class Scorer:
    """The request path over the current ServingState."""

    def __init__(
        self,
        store: FeatureStore,
        state: ServingState,
        candidates: int = 200,
        deadline_s: float = 0.05,
        parallel: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.state = store, state
        self.candidates, self.deadline_s, self.parallel = candidates, deadline_s, parallel
        # The clock speculative rows' expires_at is checked against (epoch seconds): the wall clock in
        # operation, the simulated event time in a replay (`specrec replay`).
        self.now = now
        self.pool = ThreadPoolExecutor(max_workers=IO_WORKERS, thread_name_prefix="specrec-io")
        self._inflight = 0  # store reads submitted and not finished (event-loop thread only)
        self._open_until = 0.0  # circuit breaker: no store reads before this monotonic time
        # A request's model is tiny: torch's intra-op threads would only spin against the I/O threads.
        torch.set_num_threads(1)
        self.metrics = Metrics()
        self._show_bundle()

    def _show_bundle(self, previous: ServingState | None = None) -> None:
        """Export the serving bundle as a gauge (1 for the served one, 0 for the one it replaced)."""
        if previous is not None:
            self.metrics.bundle.labels(previous.bundle.bundle_id, str(previous.bundle.version)).set(0)
        self.metrics.bundle.labels(self.state.bundle.bundle_id, str(self.state.bundle.version)).set(1)

    def swap(self, state: ServingState) -> None:
        """Serve a new bundle from the next request on (one reference assignment)."""
        previous, self.state = self.state, state
        self._show_bundle(previous)

    def _read_user(self, state: ServingState, user_id: int, now: float) -> UserSide:
        """Fresh user_state and speculative rows of the serving bundle (blocking; run in the pool)."""
        t = time.perf_counter()
        row = self.store.get_online_features(
            features=USER_FEATURES, entity_rows=[{"user_id": user_id, "bundle_id": state.bundle.bundle_id}]
        ).to_dict()
        self.metrics.stage.labels("user_read").observe(time.perf_counter() - t)
        vec = row["state"][0]
        pairs: dict[int, np.ndarray] = {}
        expires = row["expires_at"][0]
        if row["item_ids"][0] and expires is not None and expires.timestamp() > now:
            flat = np.asarray(row["pair_repr"][0], dtype=np.float32).reshape(len(row["item_ids"][0]), -1)
            pairs = {int(i): flat[k] for k, i in enumerate(row["item_ids"][0])}
        seen = set(row["recent_items"][0] or [])
        return UserSide(None if vec is None else np.asarray(vec, dtype=np.float32), seen, pairs, False)

    def _retrieve(self, state: ServingState, query: np.ndarray, n: int) -> np.ndarray:
        """Index rows of the top-n items for the query."""
        t = time.perf_counter()
        _, rows = state.index.search(query[None].astype(np.float32), min(n, len(state.item_ids)))
        self.metrics.stage.labels("retrieval").observe(time.perf_counter() - t)
        return rows[0][rows[0] >= 0]

    def _start_user_side(self, state: ServingState, user_id: int) -> asyncio.Future[UserSide] | str:
        """Start the user-side read on the I/O pool, or say why not (circuit open, pool saturated)."""
        if time.monotonic() < self._open_until:
            return "store_circuit_open"
        if self._inflight >= IO_WORKERS:  # every worker is stuck on the store: do not queue behind them
            return "store_busy"
        self._inflight += 1
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self.pool, self._read_user, state, user_id, self.now())
        pending.add_done_callback(self._read_done)
        return pending

    def _read_done(self, done: asyncio.Future[UserSide]) -> None:
        """A store read finished (perhaps long after its request gave up on it)."""
        self._inflight -= 1
        if not done.cancelled():
            done.exception()  # retrieved here: a late failure was already answered as degraded

    async def _user_side(self, pending: asyncio.Future[UserSide] | str, user_id: int) -> UserSide:
        """The user branch under the deadline; a slow or failing store degrades instead of failing."""
        if isinstance(pending, str):
            self.metrics.fallbacks.labels(pending).inc()
            return UserSide(None, set(), {}, True)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.deadline_s)
        except Exception as exc:  # noqa: BLE001 - timeout or store error: answer degraded
            reason = "store_timeout" if isinstance(exc, TimeoutError) else "store_error"
            self.metrics.fallbacks.labels(reason).inc()
            self._open_until = time.monotonic() + BREAKER_COOLDOWN_S
            log.warning("user side degraded for user %s: %s (%s)", user_id, reason, exc or type(exc).__name__)
            return UserSide(None, set(), {}, True)

    def _cold_start(self, state: ServingState, k: int, t0: float) -> dict[str, Any]:
        """Recent popularity for a user the bundle knows nothing about."""
        self.metrics.fallbacks.labels("cold_start").inc()
        self.metrics.stage.labels("total").observe(time.perf_counter() - t0)
        items = state.popular[:k].tolist()
        return {
            "items": items,
            "scores": [None] * len(items),
            "bundle_id": state.bundle.bundle_id,
            "cold_start": True,
            "degraded": False,
            "speculative_hits": 0,
        }

    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        """Top-k items for a user."""
        t0, state = time.perf_counter(), self.state
        n = max(self.candidates, req.k + 50)
        query = state.user_snapshot.get(req.user_id)
        if query is None:  # no snapshot state: perhaps a user whose first state came after the bundle loaded
            first = await self._first_read(state, req.user_id)
            if first is None:
                return self._cold_start(state, req.k, t0)
            user, query = first
            return self._rank(state, req, user, query, self._retrieve(state, query, n), t0)
        # Retrieval and scoring run on the event-loop thread (a few hundred microseconds, and faiss and
        # NumPy release the GIL); only the store read goes to the I/O pool, so a request makes one
        # thread hop. Parallel: the read is in flight while faiss searches. Sequential: it starts after.
        if self.parallel:
            pending = self._start_user_side(state, req.user_id)
            rows = self._retrieve(state, query, n)
        else:
            rows = self._retrieve(state, query, n)
            pending = self._start_user_side(state, req.user_id)
        user = await self._user_side(pending, req.user_id)
        self._remember(state, req.user_id, user)
        return self._rank(state, req, user, query, rows, t0)

    async def _first_read(self, state: ServingState, user_id: int) -> tuple[UserSide, np.ndarray] | None:
        """The user side and state of a user the snapshot lacks, read before retrieval (there is nothing to
        retrieve with yet); None when the store has no state for the user either (a cold start)."""
        user = await self._user_side(self._start_user_side(state, user_id), user_id)
        if user.vector is None:
            return None
        self._remember(state, user_id, user)
        return user, user.vector

    @staticmethod
    def _remember(state: ServingState, user_id: int, user: UserSide) -> None:
        """Keep the freshest state read as the user's retrieval query, so the next request of the session
        retrieves with the nearline state its rows were precomputed from, not the one of the bundle load."""
        if user.vector is not None:
            state.user_snapshot[user_id] = user.vector

    def _rank(
        self,
        state: ServingState,
        req: RecommendRequest,
        user: UserSide,
        query: np.ndarray,
        rows: np.ndarray,
        t0: float,
    ) -> dict[str, Any]:
        """Score the candidates and cut to k."""
        t = time.perf_counter()
        if req.exclude_seen and user.seen:
            rows = rows[~np.isin(state.item_ids[rows], np.fromiter(user.seen, dtype=np.int64))]
        vec = user.vector if user.vector is not None else query
        scores = score(state, vec, rows, user.pairs)
        hits = (
            int(np.isin(state.item_ids[rows], np.fromiter(user.pairs, dtype=np.int64)).sum())
            if user.pairs
            else 0
        )
        self.metrics.speculative.labels("hit").inc(hits)
        self.metrics.speculative.labels("miss").inc(len(rows) - hits)
        top = np.argsort(-scores, kind="stable")[: req.k]
        self.metrics.stage.labels("scoring").observe(time.perf_counter() - t)
        self.metrics.stage.labels("total").observe(time.perf_counter() - t0)
        return {
            "items": [int(state.item_ids[rows[i]]) for i in top],
            "scores": [float(scores[i]) for i in top],
            "bundle_id": state.bundle.bundle_id,
            "cold_start": False,
            "degraded": user.degraded,
            "speculative_hits": hits,
        }

    async def score_items(self, req: ScoreRequest) -> dict[str, Any]:
        """Scores of given items; unknown items are reported, the rest scored."""
        state = self.state
        known = [i for i in req.item_ids if i in state.row_of]
        unknown = [i for i in req.item_ids if i not in state.row_of]
        query = state.user_snapshot.get(req.user_id)
        if query is None:
            first = await self._first_read(state, req.user_id)
            if first is None:
                self.metrics.fallbacks.labels("cold_start").inc()
                return {
                    "scores": {},
                    "unknown_items": unknown,
                    "bundle_id": state.bundle.bundle_id,
                    "cold_start": True,
                    "degraded": False,
                }
            user, query = first
        else:
            user = await self._user_side(self._start_user_side(state, req.user_id), req.user_id)
            self._remember(state, req.user_id, user)
        rows = np.asarray([state.row_of[i] for i in known], dtype=np.int64)
        vec = user.vector if user.vector is not None else query
        values = score(state, vec, rows, user.pairs) if len(rows) else np.zeros(0)
        return {
            "scores": {str(i): float(v) for i, v in zip(known, values, strict=True)},
            "unknown_items": unknown,
            "bundle_id": state.bundle.bundle_id,
            "cold_start": False,
            "degraded": user.degraded,
        }

    def ready(self) -> bool:
        """A bundle is loaded and the online store answers."""
        try:
            self.store.get_online_features(features=["item_stats:count_1c"], entity_rows=[{"item_id": 0}])
        except Exception:  # noqa: BLE001
            return False
        return len(self.state.item_ids) > 0


def create_app(scorer: Scorer, watcher: Any | None = None) -> FastAPI:
    """The HTTP app around a Scorer; `watcher` is an optional coroutine function run in the background."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(watcher()) if watcher else None
        yield
        if task:
            task.cancel()

    app = FastAPI(
        title="specrec scorer",
        version="1",
        lifespan=lifespan,
        description="Thin online scorer over features materialized by specrec.",
    )

    @app.post("/recommend", response_model=None, responses={200: {"model": RecommendResponse}, **BAD_BODY})
    async def recommend(req: RecommendRequest) -> Response:
        """Top-k items for a user, seen items excluded by default."""
        return _json(await scorer.recommend(req))

    @app.post("/score", response_model=None, responses={200: {"model": ScoreResponse}, **BAD_BODY})
    async def score_items(req: ScoreRequest) -> Response:
        """Scores for given items; unknown items are listed, not errors."""
        return _json(await scorer.score_items(req))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz(response: Response) -> dict[str, Any]:
        """A bundle is loaded and the online store is reachable."""
        probe = asyncio.get_running_loop().run_in_executor(None, scorer.ready)  # not the request pool
        try:
            ok = await asyncio.wait_for(probe, READY_TIMEOUT_S)
        except TimeoutError:
            ok = False
        response.status_code = 200 if ok else 503
        return {"ready": ok, "bundle_id": scorer.state.bundle.bundle_id}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(scorer.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
