"""The speculator as an MLflow model `specrec-speculator`: save, load, register and load the champion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_file, save_file

from mlflow import MlflowClient
from models.speculator import FEATURES, ActivityModel
from specrec.errors import SpecrecError
from specrec.registry import CHAMPION, alias_version
from specrec.speculation.replay import Predictor

REGISTERED_MODEL = "specrec-speculator"
WEIGHTS, CONFIG = "activity.safetensors", "speculator.json"


@dataclass
class LoadedPredictor:
    """A registered predictor and its version."""

    predictor: Predictor
    version: str


def save_predictor(predictor: Predictor, settings: dict[str, Any], folder: Path) -> Path:
    """Weights (safetensors) and config (JSON: features, hidden size, rank curve, settings used)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = predictor.model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    config = {
        "features": list(FEATURES),
        "hidden": model.hidden,
        "curve": predictor.curve.tolist(),
        "info": predictor.info,
        "settings": settings,
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def load_predictor(folder: Path) -> Predictor:
    """The predictor saved by save_predictor, in eval mode."""
    config = json.loads((folder / CONFIG).read_text())
    if config["features"] != list(FEATURES):
        raise SpecrecError(
            f"the speculator in {folder} was trained on features {config['features']}, this code computes "
            f"{list(FEATURES)}; retrain it (retrain_speculator)."
        )
    model = ActivityModel(len(FEATURES), config["hidden"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return Predictor(model.eval(), np.asarray(config["curve"], np.float64), config.get("info", {}))


class SpeculatorPyfunc(PythonModel):
    """The activity model as an MLflow model: a frame of activity features in, P(request within ttl) out."""

    def load_context(self, context: Any) -> None:
        """Rebuild the predictor from the logged folder."""
        self.predictor = load_predictor(Path(context.artifacts["speculator"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """P(active) per row of features (columns named as models.speculator.FEATURES)."""
        x = model_input[list(FEATURES)].to_numpy(np.float32)
        return self.predictor.model.predict(x)


def log_and_register(predictor: Predictor, settings: dict[str, Any], folder: Path) -> str:
    """Log the predictor to the active run as a pyfunc model registered as specrec-speculator; its version."""
    import mlflow

    save_predictor(predictor, settings, folder)
    example = pd.DataFrame(np.zeros((1, len(FEATURES)), np.float32), columns=list(FEATURES))
    info = mlflow.pyfunc.log_model(
        name="speculator",
        python_model=SpeculatorPyfunc(),
        artifacts={"speculator": str(folder)},
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "safetensors", "numpy", "pandas"],
        registered_model_name=REGISTERED_MODEL,
        input_example=example,
    )
    return str(info.registered_model_version)


def load_version(version: str) -> LoadedPredictor:
    """A registered specrec-speculator version."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{version}").unwrap_python_model()
    except Exception as exc:  # noqa: BLE001 - any load failure is the same problem for the user
        raise SpecrecError(f"cannot load models:/{REGISTERED_MODEL}/{version}: {exc}") from None
    return LoadedPredictor(model.predictor, version)


def load_champion(client: MlflowClient) -> LoadedPredictor:
    """specrec-speculator@champion, or a SpecrecError saying to train one."""
    version = alias_version(client, REGISTERED_MODEL, CHAMPION)
    if version is None:
        raise SpecrecError(
            f"no {REGISTERED_MODEL}@{CHAMPION} in the MLflow registry: run retrain_speculator "
            "(`specrec speculation train --as-of DATE`) first."
        )
    return load_version(version)
