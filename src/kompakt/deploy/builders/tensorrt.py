"""Native TensorRT builder, written against the TensorRT 10/11 Python API and imported lazily.

Everything decided before the first CUDA call (profile shapes, strong typing, which precision
mechanism a TensorRT version allows, manifest fields) is plain Python in
`TensorRTBuildSettings`, tested without a GPU. TensorRT 11 builds strongly typed networks only:
FP16 and INT8 must be in the graph (an FP16 ONNX, or Q/DQ with zero-points 0); the TensorRT 10
implicit-precision builder flags are used only behind a version check, when asked for.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from kompakt._io import atomic_write
from kompakt.deploy.builders.base import (
    BACKENDS,
    Artefact,
    Backend,
    BuildOptions,
    Capabilities,
    profile_batches,
)
from kompakt.errors import ConfigError, KompaktError
from kompakt.runtime.backends.tensorrt import cuda_call, cudart, device_fingerprint

PRECISIONS = ("fp32", "fp16", "int8")


def parse_version(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ConfigError(f"cannot read TensorRT version {version!r}") from None


@dataclass(frozen=True)
class TensorRTBuildSettings:
    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 2048
    optimization_level: int = 3
    implicit_precision: bool = False  # TensorRT 10 only: builder flags instead of graph types

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"profile needs 1 <= min ({self.min_batch}) <= opt ({self.opt_batch}) <= max "
                f"({self.max_batch})"
            )
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization_level must be 0..5, got {self.optimization_level}")

    def to_dict(self) -> dict:
        return asdict(self)

    def profile(self, input_shape: list) -> tuple[tuple, tuple, tuple]:
        """(min, opt, max) shapes: a dynamic batch axis spans the profile's batches, a static
        one (`kompakt export --batch N`) is N in all three, every other axis is static."""
        rest = list(input_shape[1:])
        if any(not isinstance(d, int) or d < 1 for d in rest):
            raise ConfigError(
                f"TensorRT profiles need static dims after the batch, got {input_shape}; "
                "export with a fixed image size"
            )
        batch = input_shape[0] if input_shape else -1
        if isinstance(batch, int) and batch > 0:
            return ((batch, *rest),) * 3  # type: ignore[return-value]
        batches = (self.min_batch, self.opt_batch, self.max_batch)
        return tuple((b, *rest) for b in batches)  # type: ignore[return-value]

    def precision_plan(self, trt_version: str) -> dict:
        """How this precision is reached on this TensorRT version.

        Returns:
            {"strongly_typed": bool, "builder_flags": [...], "graph": "fp32"|"fp16"|"qdq"}.
        """
        major, _ = parse_version(trt_version)
        if major < 10:
            raise ConfigError(f"TensorRT {trt_version} is too old; kompakt needs 10.x or 11.x")
        graph = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[self.precision]
        if self.implicit_precision:
            if major >= 11:
                raise ConfigError(
                    "TensorRT 11 has no FP16/INT8 builder flags (strongly typed only); drop "
                    "implicit_precision and deploy an FP16 or Q/DQ graph"
                )
            flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[self.precision]
            # weak typing: the builder picks precisions, so feed it the fp32 (or Q/DQ) graph
            return {
                "strongly_typed": False,
                "builder_flags": flags,
                "graph": "qdq" if self.precision == "int8" else "fp32",
            }
        return {"strongly_typed": True, "builder_flags": [], "graph": graph}


def _checked(ok: object, call: str) -> None:
    """TensorRT reports most failures by a False/None/-1 result and a log line: make it loud."""
    if ok is None or ok is False or (isinstance(ok, int) and not isinstance(ok, bool) and ok < 0):
        raise KompaktError(f"TensorRT {call} failed (see the TensorRT log above)")


def _timing_cache(config, path: Path | None) -> tuple[object, bool]:
    """Set the builder's timing cache, seeded from `path` when TensorRT accepts it there:
    (the cache, whether the seed was reused). A corrupt or foreign seed is a warning."""
    blob = path.read_bytes() if path and path.is_file() else b""
    if blob:
        seeded = config.create_timing_cache(blob)
        if seeded is None:
            warnings.warn(f"TensorRT could not read the timing cache {path}", stacklevel=3)
        elif config.set_timing_cache(seeded, ignore_mismatch=False):
            return seeded, True
        else:
            warnings.warn(
                f"the timing cache {path} was made for another GPU or TensorRT; building "
                "without it",
                stacklevel=3,
            )
    cache = config.create_timing_cache(b"")
    _checked(cache, "create_timing_cache")
    _checked(config.set_timing_cache(cache, ignore_mismatch=False), "set_timing_cache")
    return cache, False


def build_plan(
    onnx_path: Path,
    bundle: Path,
    settings: TensorRTBuildSettings,
    timing_cache: Path | None = None,
    device_id: int = 0,
) -> dict:
    """Parse, configure and build a serialised engine into bundle/model.plan.

    Also writes timing.cache (seeded from `timing_cache` when given, so rebuilds reuse the
    tactic timings) and layers.json (engine inspector, JSON).
    """
    import tensorrt as trt

    cuda_call(cudart().cudaSetDevice(device_id), "cudaSetDevice")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plan = settings.precision_plan(trt.__version__)
    flags = 0
    if plan["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise KompaktError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib * 2**20)
    config.builder_optimization_level = settings.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low, opt, high = settings.profile([int(d) for d in tensor.shape])
        profile.set_shape(tensor.name, low, opt, high)
    _checked(config.add_optimization_profile(profile), "add_optimization_profile")
    cache, reused = _timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    _checked(serialized, "build_serialized_network")
    atomic_write(bundle / "model.plan", lambda handle: handle.write(bytes(serialized)))
    atomic_write(bundle / "timing.cache", lambda handle: handle.write(bytes(cache.serialize())))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    _checked(engine, "deserialize_cuda_engine")
    inspector = engine.create_engine_inspector()
    layers = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    (bundle / "layers.json").write_text(layers if isinstance(layers, str) else json.dumps(layers))
    return {
        **device_fingerprint(device_id),
        "precision_plan": plan,
        "tf32": bool(config.get_flag(trt.BuilderFlag.TF32)),
        "timing_cache_reused": reused,
        "device_memory_bytes": int(engine.device_memory_size_v2),  # 10.1+ (the pinned range)
        "profile": {
            network.get_input(i).name: [
                list(s) for s in engine.get_tensor_profile_shape(network.get_input(i).name, 0)
            ]
            for i in range(network.num_inputs)
        },
    }


@BACKENDS.register("tensorrt", help="native TensorRT engine (plan) on a CUDA GPU")
class TensorRTBackend(Backend):
    name = "tensorrt"
    distributions = ("tensorrt", "cuda-python")
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"), device="gpu", fp16_graph=True, int8_float_bias=True
    )
    needs = "pip install 'kompakt[gpu]' (tensorrt) and a CUDA GPU"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return f"the tensorrt package is not installed; {self.needs}"
        try:
            count = cuda_call(cudart().cudaGetDeviceCount())
        except KompaktError as error:
            return f"cuda-python cannot reach a CUDA GPU ({error}); {self.needs}"
        return None if count else "no CUDA GPU is visible (cudaGetDeviceCount() is 0)"

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        low, opt, high = profile_batches(options)
        settings = TensorRTBuildSettings(
            precision=precision,
            min_batch=low,
            opt_batch=opt,
            max_batch=high,
            workspace_mib=options.workspace_mib,
            optimization_level=options.builder_optimization_level,
        )
        cache = Path(options.timing_cache) if options.timing_cache else None
        info = build_plan(model, bundle, settings, cache, options.device_id)
        return Artefact(
            "model.plan",
            extra=["timing.cache", "layers.json"],
            backend_options={"settings": settings.to_dict(), "device_id": options.device_id},
            info=info,
        )
