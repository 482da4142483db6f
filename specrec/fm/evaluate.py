"""Stage `evaluate_fm`: full-ranking test metrics of the trained FM and of a popularity baseline.

Leave-one-out on history: each user's last history item is the target, everything before it the
input, all items ranked with the user's seen items excluded. Metrics go to data/metrics/evaluate_fm.json
(a DVC metric) and to the training run in MLflow (`test_*`), and onto the registered version as tags.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from models.evaluate import PopularityScorer, evaluate
from models.train import load_checkpoint
from specrec.config import Config
from specrec.errors import DataError
from specrec.fm.data import load_loo
from specrec.fm.train import REGISTERED_MODEL, RUN_FILE
from specrec.io import write_json
from specrec.registry import metric_key
from specrec.runtime import stage_main
from specrec.tracking import use_project_store

log = logging.getLogger(__name__)


def evaluate_fm(cfg: Config) -> dict[str, Any]:
    """Evaluate the checkpoint in paths.fm on the test targets; log and write the metrics."""
    import mlflow

    ckpt = cfg.path(cfg.paths.fm)
    if not (ckpt / RUN_FILE).exists():
        raise DataError(f"no trained FM in {ckpt}; run `dvc repro train_fm` first.")
    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    model = load_checkpoint(ckpt)
    fm = evaluate(model, data.test, model.config.max_len)
    pop = evaluate(PopularityScorer(data.test.histories, data.n_items), data.test, model.config.max_len)
    run = json.loads((ckpt / RUN_FILE).read_text())
    use_project_store(cfg)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.log_metrics(
            {f"test_{metric_key(k)}": v for k, v in fm.items()}
            | {f"test_popularity_{metric_key(k)}": v for k, v in pop.items()}
        )
    for key in ("ndcg@10", "hr@10"):
        client.set_model_version_tag(
            REGISTERED_MODEL, run["version"], f"test_{metric_key(key)}", repr(fm[key])
        )
    metrics = {"fm": fm, "popularity": pop, "users": len(data.test), "version": run["version"]}
    write_json(metrics, cfg.path(cfg.paths.metrics) / "evaluate_fm.json")
    log.info(
        "evaluate_fm: fm ndcg@10 %.4f hr@10 %.4f; popularity ndcg@10 %.4f hr@10 %.4f",
        fm["ndcg@10"],
        fm["hr@10"],
        pop["ndcg@10"],
        pop["hr@10"],
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    """`python -m specrec.fm.evaluate [--params params.yaml]`."""
    stage_main(evaluate_fm, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
