"""schemathesis against the running scorer's OpenAPI schema: a real uvicorn server on loopback serving a
bundle of the tiny project; generated valid and invalid requests to every operation; no 5xx and every
answer as documented (status code, content type, body). benchmarks/reliability.py runs 1,000+ cases."""

from __future__ import annotations

import pytest

import mlflow
from benchmarks.reliability import fuzz
from specrec.clock import ReplayClock
from specrec.nearline import bundles
from specrec.nearline.materialize import materialize_items
from specrec.nearline.store import apply
from specrec.nearline.user_state import update_user_state
from specrec.online.app import build_scorer
from specrec.online.check import serve_in_thread
from specrec.online.service import create_app
from specrec.tracking import experiment_id
from tests.integration.conftest import TinyProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = 200  # ~15 s on a loaded 2-core machine; the benchmark runs 1,200


def test_fuzzed_requests_get_documented_answers_and_no_server_error(tiny: TinyProject) -> None:
    cfg, client = tiny.cfg, mlflow.MlflowClient()
    previous = bundles.serving(client)
    store, as_of = apply(cfg), ReplayClock.from_config(cfg.clock).cycle(1).as_of
    parts = bundles.champion_parts(client) | {"codebook": "fuzz-test"}
    bundle = bundles.register(client, parts, experiment_id(cfg.root, "materialize"))
    materialize_items(cfg, as_of, bundle, store, client, progress=False)
    update_user_state(cfg, as_of, bundle, store)
    bundles.promote_serving(client, bundle)
    try:
        scorer, watch = build_scorer(cfg, watch_seconds=3600)
        with serve_in_thread(create_app(scorer, watch)) as url:
            found = fuzz(url, CASES)
    finally:
        if previous is not None:  # leave the project serving what it served before
            bundles.promote_serving(client, previous)
    assert found["operations"] == 5  # /recommend, /score, /healthz, /readyz, /metrics
    assert found["cases"] >= 0.9 * CASES
    assert found["server_errors"] == 0, found["failure_examples"]
    assert found["schema_violations"] == 0, found["failure_examples"]
