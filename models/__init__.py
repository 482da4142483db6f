"""Torch models of the foundation model (HSTU) and its SASRec baseline, with training and evaluation.

Pure torch/numpy: nothing here imports Prefect, Feast or MLflow, and importing does no work.
"""

from models.evaluate import KS, PopularityScorer, evaluate, metrics_from_ranks, target_ranks
from models.hstu import HSTU, HSTUConfig, KVCache
from models.losses import LOSS_NAMES, full_cross_entropy, next_item_loss, sampled_softmax
from models.sasrec import SASRec, SASRecConfig
from models.sequences import EvalSet, Sequences, leave_one_out
from models.train import (
    EpochRecord,
    TrainConfig,
    TrainResult,
    build_model,
    load_checkpoint,
    save_checkpoint,
    train,
)

__all__ = [
    "HSTU",
    "KS",
    "LOSS_NAMES",
    "EpochRecord",
    "EvalSet",
    "HSTUConfig",
    "KVCache",
    "PopularityScorer",
    "SASRec",
    "SASRecConfig",
    "Sequences",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "full_cross_entropy",
    "leave_one_out",
    "load_checkpoint",
    "metrics_from_ranks",
    "next_item_loss",
    "sampled_softmax",
    "save_checkpoint",
    "target_ranks",
    "train",
]
