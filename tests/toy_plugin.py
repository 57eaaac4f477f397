"""A layer, a backend and a metric defined outside kompakt, the way a user's plugin would be:
each registered from this one module, touching no kompakt file. Importing it registers them (the
bench workers import it in their fresh processes); `unregister()` takes them away again."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kompakt.compression import COMPRESSIONS, Compression
from kompakt.deploy.builders import BACKENDS, Artefact, Backend, BuildOptions, Capabilities
from kompakt.layers import LAYERS, CompressedLayer
from kompakt.models import MODELS
from kompakt.runtime.backends import RUNNERS, EngineFiles, require
from kompakt.runtime_bench.metrics import METRICS, Metric


# -- a layer: W = U V, rank r --------------------------------------------------------------------
class LowRankLinear(CompressedLayer):
    """y = x V^T U^T + b with U (out, r), V (r, in)."""

    dense_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.v = nn.Parameter(torch.randn(rank, in_features) / in_features**0.5)
        self.u = nn.Parameter(torch.randn(out_features, rank) / rank**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x @ self.v.t()) @ self.u.t()  # (..., r) then (..., out)
        return y + self.bias if self.bias is not None else y

    @classmethod
    def from_dense(cls, dense: nn.Linear, rank: int) -> LowRankLinear:
        u, s, vh = torch.linalg.svd(dense.weight.detach(), full_matrices=False)
        layer = cls(dense.in_features, dense.out_features, rank, dense.bias is not None)
        with torch.no_grad():
            layer.u.copy_(u[:, :rank] * s[:rank])
            layer.v.copy_(vh[:rank])
            if dense.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.u @ self.v)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def init_args(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.bias is not None,
        }

    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def macs(self, input_shape: tuple[int, ...]) -> int:
        rows = int(np.prod(input_shape[:-1]))
        return rows * self.rank * (self.in_features + self.out_features)

    def export_forms(self) -> tuple[str, ...]:
        return ("factored", "dense")

    def export_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        rows = int(np.prod(input_shape[:-1]))
        return {"factored": self.macs(input_shape), "dense": rows * self.dense_params()}


@dataclass(frozen=True)
class LowRankConfig:
    rank: int = 4


class LowRankCompression(Compression):
    """Truncated SVD of Linear layers (W = U V)."""

    config_type = LowRankConfig
    produces = (LowRankLinear,)

    def replace(self, module: nn.Module, config: LowRankConfig):
        if not isinstance(module, nn.Linear):
            return None
        new = LowRankLinear.from_dense(module, config.rank)
        with torch.no_grad():
            error = torch.linalg.norm(new.u @ new.v - module.weight)
            error = error / torch.linalg.norm(module.weight)
        return new, float(error)

    def candidates(self, module: nn.Module) -> list[LowRankConfig]:
        """Ranks whose twin keeps at most half the weights (what `kompakt optimize` tries)."""
        if not isinstance(module, nn.Linear):
            return []
        size = module.in_features * module.out_features
        return [
            LowRankConfig(rank)
            for rank in (2, 4, 8)
            if rank * (module.in_features + module.out_features) <= size / 2
        ]


# -- a backend: ONNX's own reference evaluator (numpy only) -------------------------------------
class ReferenceRunner:
    sdk = "onnx"

    def __init__(self, files: EngineFiles, manifest: dict, threads: int | None) -> None:
        reference = require("onnx.reference", "dev", "the toy-reference backend")
        import onnx

        self.evaluator = reference.ReferenceEvaluator(onnx.load_from_string(files.data))
        self.input_name = manifest["inputs"][0]["name"]

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.evaluator.run(None, {self.input_name: x})[0])

    def close(self) -> None:
        self.evaluator = None


class ReferenceBuilder(Backend):
    name = "toy-reference"
    capabilities = Capabilities(precisions=("fp32",), device="cpu")

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        shutil.copyfile(model, bundle / "model.reference.onnx")
        return Artefact("model.reference.onnx", info={"note": "onnx.reference (slow, exact)"})


# -- a model: a user's small CNN, trained and optimized through the CLI with --plugin ------------
class ToyCNN(nn.Module):
    """conv8 - conv32 - FC 512 -> 64 -> classes (a user's network, not from the zoo)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_toy_cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ToyCNN(num_classes, in_channels, image_size)


# -- a metric -----------------------------------------------------------------------------------
OVERHEAD = Metric(
    "toy_overhead_kib",
    "bundle overhead",
    "KiB",
    "lower",
    lambda r: (r.bundle_bytes - r.artefact_bytes) / 1024,
    ".1f",
    regression=0.05,
)


def register() -> None:
    if "toy-low-rank" not in LAYERS:
        LAYERS.register("toy-low-rank")(LowRankLinear)
        COMPRESSIONS.register("lowrank")(LowRankCompression)
        RUNNERS.register("toy-reference")(ReferenceRunner)
        BACKENDS.register("toy-reference")(ReferenceBuilder)
        METRICS.register(OVERHEAD.name)(OVERHEAD)
        MODELS.register("toy-cnn", help="a user's small CNN (tests/toy_plugin.py)")(build_toy_cnn)


def unregister() -> None:
    LAYERS.unregister("toy-low-rank")
    MODELS.unregister("toy-cnn")
    COMPRESSIONS.unregister("lowrank")
    RUNNERS.unregister("toy-reference")
    BACKENDS.unregister("toy-reference")
    METRICS.unregister(OVERHEAD.name)


register()
