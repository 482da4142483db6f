"""The FM as an MLflow pyfunc model: the safetensors checkpoint, its config and the id map as artifacts.

`mlflow.pyfunc.load_model("models:/specrec-fm@champion")` gives a model whose `predict` takes a frame
with list columns `items` (item_idx, time-ordered) and `timestamps` (unix seconds) and returns each
row's top-k items; `unwrap_python_model().model` is the torch module itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from models.sequences import Sequences, history_batch
from models.train import load_checkpoint

ID_MAP_FILE = "items.parquet"


class FMPyfunc(PythonModel):
    """Loads the checkpoint directory logged under the artifact key `checkpoint`."""

    def load_context(self, context: Any) -> None:
        """Rebuild the torch model and the item_idx -> item_id map."""
        directory = Path(context.artifacts["checkpoint"])
        self.model = load_checkpoint(directory)
        self.item_ids = pd.read_parquet(directory / ID_MAP_FILE).set_index("item_idx")["item_id"]

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Top-k (default 10) item_idx, item_id and score per row, seen items excluded."""
        k = int((params or {}).get("k", 10))
        seqs = Sequences(
            [np.asarray(v, dtype=np.int64) for v in model_input["items"]],
            [np.asarray(v, dtype=np.int64) for v in model_input["timestamps"]],
        )
        items, times = history_batch(seqs, np.arange(len(seqs)), self.model.config.max_len)
        with torch.no_grad():
            scores = self.model.user_state(items, times) @ self.model.item_embeddings().T  # (B, n_items+1)
        scores[:, 0] = float("-inf")
        for row, seen in enumerate(seqs.items):
            scores[row, torch.as_tensor(np.array(seen, dtype=np.int64))] = float("-inf")
        top = scores.topk(k, dim=1)
        idx = top.indices.numpy()
        return pd.DataFrame(
            {
                "item_idx": list(idx),
                "item_id": [self.item_ids.loc[r].to_numpy() for r in idx],
                "score": list(top.values.numpy()),
            }
        )
