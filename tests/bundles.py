"""Shared builders for the deploy and runtime tests: a small trained model, exported once."""

from __future__ import annotations

from pathlib import Path

from kompakt.deploy import BuildOptions, DeployConfig, build_bundle
from kompakt.export import export_onnx
from kompakt.train import TrainConfig, fit


def trained_onnx(root: Path, model: str = "lenet5", data: str = "digits") -> Path:
    """Train 2 epochs on an embedded dataset and export; returns the .onnx path."""
    fit(TrainConfig(model=model, data=data, epochs=2, out=str(root / "run"), quiet=True))
    path = root / f"{model}.onnx"
    export_onnx(root / "run" / "best.pt", path)
    return path


def bundle(onnx_path: Path, out: Path, **config) -> Path:
    options = config.pop("options", BuildOptions(max_batch=64))
    build_bundle(onnx_path, out, DeployConfig(**config), options)
    return out
