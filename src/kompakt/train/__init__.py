"""Training: `fit` (exact resume, DDP, hooks), pruning, `kompakt prune`. Checkpoints live in
`kompakt.models.checkpoint` and are re-exported here for the older import path."""

from kompakt.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from kompakt.train.trainer import (
    TrainConfig,
    TrainHook,
    TrainingDivergedError,
    evaluate,
    fit,
    parse_compress,
)

__all__ = [
    "TrainConfig",
    "TrainHook",
    "TrainingDivergedError",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "parse_compress",
    "save_checkpoint",
]
