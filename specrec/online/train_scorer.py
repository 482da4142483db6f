"""Train the thin scorer at as_of by distillation from the champion FM; log, register and gate it.

MLflow experiment `scorer`, run named by as_of. The holdout compares, on the same candidates: the
scorer with FM pair representations (every candidate a speculative hit), without them (every one a
miss), the FM pair scores themselves (the teacher, i.e. full FM online) and the retrieval order.
`specrec-scorer@champion` moves only when the new version's holdout NDCG@10 without pair
representations (the worst case online) beats the champion's, re-judged on the same holdout.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_file, save_file

import mlflow
from models.evaluate import metrics_from_ranks
from models.hstu import HSTU
from models.scorer import DistillBatch, ScorerConfig, ThinScorer, distill
from specrec.clock import to_utc
from specrec.config import Config, parse_duration
from specrec.errors import SpecrecError
from specrec.io import read_parquet
from specrec.nearline.materialize import load_fm
from specrec.online.distill_data import build_examples
from specrec.registry import CHAMPION, alias_version, metric_key, promote_if_better
from specrec.tracking import experiment_id

log = logging.getLogger(__name__)

EXPERIMENT = "scorer"
REGISTERED_MODEL = "specrec-scorer"
WEIGHTS, CONFIG = "scorer.safetensors", "scorer.json"
COLUMNS = ("u", "e", "p", "hit", "s")


class ScorerPyfunc(PythonModel):
    """The thin scorer as an MLflow model: rows of u, e, p, hit, s (nested lists) in, candidate scores out."""

    def load_context(self, context: Any) -> None:
        """Rebuild the module from the logged folder."""
        self.model = load_scorer(Path(context.artifacts["scorer"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[list[float]]:
        """One list of candidate scores per row."""
        out = []
        with torch.no_grad():
            for row in model_input.itertuples():
                t = {k: torch.tensor(np.asarray(getattr(row, k), dtype=np.float32))[None] for k in COLUMNS}
                out.append(self.model(t["u"], t["e"], t["p"], t["hit"], t["s"])[0].tolist())
        return out


def save_scorer(model: ThinScorer, folder: Path) -> Path:
    """Weights (safetensors) and config (JSON) in a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(asdict(model.config)))
    return folder


def load_scorer(folder: Path) -> ThinScorer:
    """The scorer saved by save_scorer, in eval mode."""
    model = ThinScorer(ScorerConfig(**json.loads((folder / CONFIG).read_text())))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()


def load_registered(version: str) -> ThinScorer:
    """The torch module of a registered specrec-scorer version."""
    return mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{version}").unwrap_python_model().model


def _subset(d: DistillBatch, mask: torch.Tensor) -> DistillBatch:
    """Examples where mask is true."""
    return DistillBatch(d.u[mask], d.e[mask], d.p[mask], d.teacher[mask], d.s[mask], d.label[mask])


def _ranks(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """0-based rank of the chosen item among the candidates; not retrieved counts as a miss at every k."""
    own = scores.gather(1, label.clamp(min=0).unsqueeze(1))
    return torch.where(label >= 0, (scores > own).sum(1), torch.full_like(label, 10**9))


@torch.no_grad()
def holdout_metrics(model: ThinScorer, d: DistillBatch) -> dict[str, float]:
    """NDCG@10 / HR@10 on the holdout: scorer with and without pair reps, the FM teacher, retrieval."""
    shape = d.e.shape[:2]
    variants = {
        "with_pair": model(d.u, d.e, d.p, torch.ones(shape), d.s),
        "without_pair": model(d.u, d.e, d.p, torch.zeros(shape), d.s),
        "full_fm": d.teacher,
        "retrieval": (d.u.unsqueeze(1) * d.e).sum(-1),
    }
    out: dict[str, float] = {}
    for name, scores in variants.items():
        m = metrics_from_ranks(_ranks(scores, d.label), (10,))
        out |= {f"{name}_ndcg@10": m["ndcg@10"], f"{name}_hr@10": m["hr@10"]}
    return out


def _rejudge_champion(client: mlflow.MlflowClient, hold: DistillBatch) -> None:
    """Score the current champion on this holdout and record it as its gate value, so the gate compares
    two scorers on the same examples (the recorded value came from another as_of's holdout)."""
    champion = alias_version(client, REGISTERED_MODEL, CHAMPION)
    if champion is None:
        return
    score = holdout_metrics(load_registered(champion), hold)["without_pair_ndcg@10"]
    client.set_model_version_tag(REGISTERED_MODEL, champion, f"gate_{metric_key('ndcg@10')}", repr(score))


def train_scorer(cfg: Config, as_of: object) -> dict[str, Any]:
    """Distil, evaluate, log, register and gate the thin scorer at as_of."""
    when, sc = to_utc(as_of), cfg.scorer
    client = mlflow.MlflowClient()
    fm_version = alias_version(client, "specrec-fm", CHAMPION)
    if fm_version is None:
        raise SpecrecError("no specrec-fm@champion in the MLflow registry: train the FM first (`dvc repro`).")
    fm = load_fm(fm_version)
    if not isinstance(fm, HSTU):
        raise SpecrecError(
            f"specrec-fm v{fm_version} is a {type(fm).__name__}; the scorer distils from an HSTU FM "
            "(its pair representations are the teacher). Set fm.model: hstu and retrain."
        )
    events = read_parquet(cfg.path(cfg.paths.prepared) / "interactions.parquet", "prepared interactions")
    items = read_parquet(cfg.path(cfg.paths.prepared) / "items.parquet", "prepared items")
    data = build_examples(
        fm,
        events,
        items,
        when,
        parse_duration("clock.cadence", cfg.clock.cadence),
        sc.candidates,
        sc.max_examples,
        per_user=sc.events_per_user,
    )
    n_hold = max(1, int(round(len(data.label) * sc.holdout_share)))
    hold = torch.arange(len(data.label)) < n_hold  # the newest users are held out
    torch.manual_seed(sc.seed)
    model = ThinScorer(
        ScorerConfig(dim=int(data.u.shape[1]), hidden=sc.hidden, base=sc.base, scale=fm.logit_scale())
    )
    with mlflow.start_run(
        experiment_id=experiment_id(cfg.root, EXPERIMENT), run_name=str(when.date())
    ) as run:
        mlflow.set_tags({"as_of": when.isoformat(), "fm_version": fm_version})
        mlflow.log_params({f"scorer.{k}": v for k, v in asdict(sc).items()} | {"examples": len(data.label)})
        losses = distill(model, _subset(data, ~hold), sc.epochs, sc.lr, sc.hit_rate, seed=sc.seed)
        for epoch, loss in enumerate(losses, start=1):
            mlflow.log_metric("train_loss", loss, step=epoch)
        metrics = holdout_metrics(model, _subset(data, hold))
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_scorer(model, Path(tmp) / "scorer")
            info = mlflow.pyfunc.log_model(
                name="scorer",
                python_model=ScorerPyfunc(),
                artifacts={"scorer": str(folder)},
                pip_requirements=["torch==2.13.0", "safetensors==0.8.0", "numpy==2.4.6"],
                registered_model_name=REGISTERED_MODEL,
            )
    version = str(info.registered_model_version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "fm_version", fm_version)
    _rejudge_champion(client, _subset(data, hold))
    gate = promote_if_better(client, REGISTERED_MODEL, version, "ndcg@10", metrics["without_pair_ndcg@10"])
    log.info("scorer v%s at %s: %s; %s", version, when.date(), metrics, gate.reason)
    return {
        "version": version,
        "run_id": run.info.run_id,
        "promoted": gate.promoted,
        "examples": len(data.label),
        "holdout": int(n_hold),
        **metrics,
    }
