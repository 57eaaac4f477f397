"""The deploy builder registry, the Capabilities record, build options and the Backend base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from kompakt.errors import ConfigError
from kompakt.machine import package_version
from kompakt.options import opt
from kompakt.registry import Registry

BACKENDS: Registry = Registry("backend")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once where it is defined.

    Args:
        precisions: the precisions it builds.
        device: "cpu" or "gpu" (INT8 on "cpu" runs integer kernels whose exactness depends on
            the CPU's instructions; see kompakt.runtime.cpu).
        fp16_graph: fp16 needs an FP16 ONNX graph (TensorRT's strong typing); otherwise the
            backend stores half weights itself from the fp32 graph.
        int8_float_bias: the INT8 Q/DQ graph keeps biases float (TensorRT's DequantizeLinear
            takes INT8 / FP8 / INT4 inputs only, never the INT32 biases ORT writes by default).
    """

    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    fp16_graph: bool = False
    int8_float_bias: bool = False


@dataclass(frozen=True)
class BuildOptions:
    """Backend options shared by `kompakt deploy` and `build_bundle` (CLI names = fields)."""

    threads: int | None = opt(None, "Intra-op threads of the engine (default: the runtime's).")
    opt_level: Literal["basic", "all"] = opt(
        "basic", "onnxruntime: basic = portable artefact; all = this machine only."
    )
    ort_format: bool = opt(False, "onnxruntime: save the .ort format.")
    min_batch: int = opt(1, "Smallest batch of the engine's profile.")
    opt_batch: int | None = opt(None, "Batch the engine is tuned for (GPU profiles).")
    max_batch: int | None = opt(None, "Largest batch the engine accepts.")
    device_id: int = opt(0, "CUDA device the GPU backends build and run on.")
    workspace_mib: int = opt(2048, "TensorRT builder workspace (MiB).")
    builder_optimization_level: int = opt(3, "TensorRT builder optimisation level (0..5).")
    timing_cache: str | None = opt(
        None,
        "TensorRT timing cache to start from (default: the one in the bundle being replaced).",
    )

    def __post_init__(self) -> None:
        if self.opt_level not in ("basic", "all"):
            raise ConfigError(f"opt_level must be 'basic' or 'all', got {self.opt_level!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


@dataclass
class Artefact:
    """What a backend built: the file the runtime loads, extra files, options for the runner."""

    path: str  # relative to the bundle
    extra: list[str] = field(default_factory=list)
    backend_options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Backend(ABC):
    """A deploy builder: `build` writes the artefact, `unavailable_reason` says why it cannot."""

    name = ""
    capabilities = Capabilities()
    needs = ""  # what to install, for the unavailable message
    precision_notes: ClassVar[dict[str, str]] = {}  # why a precision is not offered
    # the distributions whose installed versions `kompakt list backends` shows (and bundles
    # record), by their pip names, as scripts/gpu_smoke.py's preflight names them too
    distributions: ClassVar[tuple[str, ...]] = ()

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.capabilities.precisions

    def unavailable_reason(self) -> str | None:
        return None

    @abstractmethod
    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        """Build the artefact for `model` (already in `precision`) inside `bundle`."""


def profile_batches(options: BuildOptions) -> tuple[int, int, int]:
    """(min, opt, max) batch for optimisation profiles, validated."""
    low = options.min_batch
    high = options.max_batch or max(low, 32)
    opt = options.opt_batch or min(max(low, 8), high)
    if not 1 <= low <= opt <= high:
        raise ConfigError(
            f"batch profile must satisfy 1 <= min ({low}) <= opt ({opt}) <= max ({high})"
        )
    return low, opt, high


def list_backends() -> list[dict]:
    """Every registered backend with its precisions and, if unavailable, why and the fix."""
    rows = []
    for name in BACKENDS.names():
        backend = BACKENDS.get(name)()
        reason = backend.unavailable_reason()
        rows.append(
            {
                "name": name,
                "precisions": list(backend.precisions),
                "available": reason is None,
                "reason": reason,
                "versions": {
                    dist: version
                    for dist in backend.distributions
                    if (version := package_version(dist))
                },
            }
        )
    return rows
