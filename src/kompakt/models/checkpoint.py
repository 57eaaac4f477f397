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
        # torch's own text is long and suggests weights_only=False, which would run code from
        # the file: name what happened instead
        raise CheckpointError(
            f"{path} is not a readable kompakt checkpoint (corrupt, truncated, or not a torch "
            f"file; {type(error).__name__}); re-train or re-save it"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a kompakt checkpoint: expected format {FORMAT!r}, found {found!r} "
            "(a plain state_dict? wrap it with kompakt.models.make_checkpoint)"
        )
    for key, kind in (("model", dict), ("state_dict", dict), ("data", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(
                f"{path}: the {key!r} section of {FORMAT} is missing or malformed"
            )
    if not isinstance(ckpt["model"].get("name"), str):
        raise CheckpointError(f"{path}: the 'model' section names no model")
    if not isinstance(ckpt["model"].get("kwargs", {}), dict):
        raise CheckpointError(f"{path}: the model's 'kwargs' must be a dict")
    shape = ckpt["data"].get("input_shape")
    if not (isinstance(shape, list | tuple) and shape and all(isinstance(d, int) for d in shape)):
        raise CheckpointError(
            f"{path}: data.input_shape is missing or not a list of ints (got {shape!r})"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model from the registries and load its weights."""
    spec = ckpt["model"]
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    apply_layer_specs_(model, spec.get("layers", []))
    apply_resizes_(model, spec.get("resized", []))
    expected, given = set(model.state_dict()), set(ckpt["state_dict"])
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit model {spec['name']!r}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as error:
        lines = [ln.strip() for ln in str(error).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(error).splitlines()[0]
        raise CheckpointError(
            f"checkpoint weights do not fit model {spec['name']!r}: {detail}"
        ) from None
    return model.eval()
