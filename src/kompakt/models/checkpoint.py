"""Checkpoints: {"format", "model": spec, "state_dict", "data", "metrics", "train"}; rebuilt from
the registries (never pickled code), written atomically.

They live with the models because every stage that turns a file into a model (export, deploy
parity, bench, search, pruning) needs them, and none of those should depend on training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kompakt._io import atomic_write
from kompakt.errors import CheckpointError
from kompakt.models.registry import build_model
from kompakt.models.resize import apply_resizes_
from kompakt.models.surgery import apply_layer_specs_

FORMAT = "kompakt-checkpoint/1"


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write `ckpt` atomically (temp file, fsync, rename): a crash never leaves half a file."""
    atomic_write(path, lambda handle: torch.save(ckpt, handle))


atomic_save = save_checkpoint  # the older name


def make_checkpoint(
    model: nn.Module,
    model_spec: dict,
    data: dict,
    metrics: dict | None = None,
    train: dict | None = None,
) -> dict:
    """The checkpoint dict: `model_spec` is {"name", "kwargs", "layers"} (see layer_specs)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "model": model_spec,
        "state_dict": state,
        "data": data,
        "metrics": metrics or {},
        "train": train or {},
    }


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint (weights_only: no code is unpickled).

    Raises:
        CheckpointError: for a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable kompakt checkpoint (corrupt or truncated?): {first}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a kompakt checkpoint: expected format {FORMAT!r}, found {found!r} "
            "(a plain state_dict? wrap it with kompakt.models.make_checkpoint)"
        )
    for key in ("model", "state_dict", "data"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the {key!r} section of {FORMAT}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model from the registries and load its weights."""
    spec = ckpt["model"]
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    apply_layer_specs_(model, spec.get("layers", []))
    apply_resizes_(model, spec.get("resized", []))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint weights do not fit model {spec['name']!r}: {str(error).splitlines()[0]}"
        ) from None
    return model.eval()
