"""Checkpoints per the DESIGN.md contract: spec + state_dict, never pickled code, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from kompakt.errors import CheckpointError
from kompakt.models import apply_layer_specs_, build_model

FORMAT = "kompakt-checkpoint/1"


def atomic_save(obj: object, path: str | Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            "(a plain state_dict? wrap it with kompakt.train.make_checkpoint)"
        )
    for key in ("model", "state_dict", "data"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the {key!r} section of {FORMAT}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model from the registries and load its weights."""
    spec = ckpt["model"]
    from kompakt.train.pruning import apply_resizes_

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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
