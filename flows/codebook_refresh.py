"""Prefect flow `codebook_refresh(as_of)`: semantic IDs for new items, drift watch, retrain on a threshold.

Thin: one task runs specrec.codebook.refresh (code the items first seen since the last run with the
frozen champion codebook, measure drift, retrain and gate only past a threshold in params.yaml, log
health to MLflow `codebook-refresh`); then the champion bundle (which names the codebook champion) is
materialized into Feast `item_repr`, so the new items' `semantic_id` and code-based embeddings are
served. A retrained, promoted codebook makes a new bundle, written completely beside the serving one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import resolve_as_of, retry_unless_user_error, setup


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_unless_user_error)
def refresh_codes(params: str, as_of: str) -> dict[str, Any]:
    """Assign, check drift, maybe retrain; return the run's summary."""
    from specrec.codebook.refresh import refresh

    cfg, client = setup(params)
    return refresh(cfg, as_of, client).summary()


@flow(name="codebook_refresh")
def codebook_refresh(as_of: str, params: str = "params.yaml", write_feast: bool = True) -> dict[str, Any]:
    """Refresh the semantic-ID codebook at as_of; write the champion bundle's item_repr rows to Feast."""
    from flows.materialize_item_embeddings import materialize_item_embeddings

    as_of = resolve_as_of(as_of, params)
    params = str(Path(params).resolve())
    result = refresh_codes(params, as_of)
    logger = get_run_logger()
    logger.info(
        "codebook v%s at %s: %d new items coded (%d without text), retrain: %s (%s)",
        result["version"],
        as_of,
        result["new_items"],
        result["without_text"],
        result["retrained"],
        "; ".join(result["reasons"]) or "no threshold crossed",
    )
    if write_feast:
        result["item_repr"] = materialize_item_embeddings(as_of=as_of, bundle="champion", params=params)
    return result
