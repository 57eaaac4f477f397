"""Training: `fit`, checkpoints (atomic, resumable), DDP."""

from kompakt.train.checkpoint import (
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
)
from kompakt.train.trainer import TrainConfig, TrainingDivergedError, evaluate, fit, parse_compress

__all__ = [
    "TrainConfig",
    "TrainingDivergedError",
    "atomic_save",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "parse_compress",
]
