"""Deploy backends (a registry): how each turns an ONNX model into a bundle artefact.

An unavailable backend stays listed with the reason and the fix (`kompakt deploy
--list-backends`). Heavy SDKs are imported inside the methods that need them.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from kompakt.errors import ConfigError
from kompakt.registry import Registry

BACKENDS: Registry = Registry("backend")


@dataclass(frozen=True)
class BuildOptions:
    """Backend options shared by `kompakt deploy` and `build_bundle`."""

    threads: int | None = None
    opt_level: str = "basic"  # onnxruntime: basic (portable artefact) | all (this machine only)
    ort_format: bool = False
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    device_id: int = 0
    workspace_mib: int = 2048
    builder_optimization_level: int = 3
    rebuild_if_stale: bool = False


@dataclass
class Artefact:
    """What a backend built: the file the runtime loads, extra files, options for the runner."""

    path: str  # relative to the bundle
    extra: list[str] = field(default_factory=list)
    backend_options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Backend(ABC):
    name = ""
    precisions: tuple[str, ...] = ("fp32",)
    needs = ""  # what to install, for the unavailable message

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


@BACKENDS.register("onnxruntime", help="ONNX Runtime CPU execution provider")
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8")

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import onnxruntime as ort

        if options.opt_level not in ("basic", "all"):
            raise ConfigError(f"opt_level must be 'basic' or 'all', got {options.opt_level!r}")
        level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.opt_level]
        name = "model.optimized.ort" if options.ort_format else "model.optimized.onnx"
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = level
        session_options.optimized_model_filepath = str(bundle / name)
        session_options.log_severity_level = 3
        if options.ort_format:
            session_options.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(model), session_options, providers=["CPUExecutionProvider"])
        note = (
            "saved at ORT_ENABLE_BASIC: portable"
            if options.opt_level == "basic"
            else "saved at ORT_ENABLE_ALL: may hold hardware-specific kernels (NCHWc, fused ops); "
            "rebuild on another machine"
        )
        backend_options = {"opt_level": options.opt_level, "threads": options.threads}
        optimized = bundle / name
        if not options.ort_format and optimized.stat().st_size > 1.05 * model.stat().st_size:
            # Folding rebuilt the TT-conv kernels from their cores: ship the smaller graph,
            # ONNX Runtime folds it again when the session loads.
            optimized.unlink()
            note = (
                "the optimised graph was larger than the source (constant-folded TT "
                "kernels); shipping the source graph, which ONNX Runtime optimises at load"
            )
            return Artefact(model.name, backend_options=backend_options, info={"note": note})
        return Artefact(
            name,
            backend_options={"opt_level": options.opt_level, "threads": options.threads},
            info={"note": note},
        )


def ort_gpu_reason(provider: str) -> str | None:
    """Why an ONNX Runtime GPU provider cannot run here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if provider not in ort.get_available_providers():
        return (
            f"{provider} is not in this onnxruntime build; needs `pip install "
            "'kompakt[gpu]'` (onnxruntime-gpu) and a CUDA GPU"
        )
    return None


def tensorrt_ep_options(
    input_name: str,
    input_shape: list,
    precision: str,
    options: BuildOptions,
    cache_dir: str = "trt_cache",
) -> dict:
    """TensorRT execution-provider options: caches in the bundle, explicit batch profiles."""
    low, opt, high = profile_batches(options)
    dims = [str(d) for d in input_shape[1:]]
    if any(not d.isdigit() for d in dims):
        raise ConfigError(f"TensorRT profiles need static non-batch dims, got {input_shape}")

    def shape(batch: int) -> str:
        return f"{input_name}:{'x'.join([str(batch), *dims])}"

    provider = {
        "device_id": options.device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache_dir,
        "trt_max_workspace_size": options.workspace_mib * 2**20,
        "trt_builder_optimization_level": options.builder_optimization_level,
        "trt_profile_min_shapes": shape(low),
        "trt_profile_opt_shapes": shape(opt),
        "trt_profile_max_shapes": shape(high),
    }
    if precision == "fp16":
        provider["trt_fp16_enable"] = True
    if precision == "int8":
        provider["trt_int8_enable"] = True  # the Q/DQ graph carries the scales
    return provider


class _OrtGpuBackend(Backend):
    provider = ""
    needs = "pip install 'kompakt[gpu]' (onnxruntime-gpu) and a CUDA GPU"

    def unavailable_reason(self) -> str | None:
        return ort_gpu_reason(self.provider)

    def provider_options(self, model: Path, precision: str, options: BuildOptions) -> dict:
        return {"device_id": options.device_id}

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import onnx
        import onnxruntime as ort

        provider_options = self.provider_options(model, precision, options)
        (bundle / "trt_cache").mkdir(exist_ok=True)
        resolved = {
            k: str(bundle / v) if k.endswith("cache_path") else v
            for k, v in provider_options.items()
        }
        session_options = ort.SessionOptions()
        session_options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        session = ort.InferenceSession(
            str(model),
            session_options,
            providers=[(self.provider, resolved), "CPUExecutionProvider"],
        )
        active = session.get_providers()
        if active[0] != self.provider:
            raise ConfigError(
                f"{self.provider} did not activate (ONNX Runtime fell back to {active})"
            )
        placement = {}
        for subgraph in session.get_provider_graph_assignment_info():
            placement[subgraph.ep_name] = placement.get(subgraph.ep_name, 0) + len(
                subgraph.get_nodes()
            )
        total = len(onnx.load(str(model), load_external_data=False).graph.node)
        return Artefact(
            model.name,
            backend_options={"provider_options": provider_options},
            info={"nodes_by_provider": placement, "nodes_total": total},
        )


@BACKENDS.register("onnxruntime-cuda", help="ONNX Runtime CUDA execution provider")
class OnnxRuntimeCudaBackend(_OrtGpuBackend):
    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    precisions = ("fp32", "fp16", "int8")


@BACKENDS.register("onnxruntime-tensorrt", help="ONNX Runtime TensorRT execution provider")
class OnnxRuntimeTensorrtBackend(_OrtGpuBackend):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
    precisions = ("fp32", "fp16", "int8")

    def provider_options(self, model: Path, precision: str, options: BuildOptions) -> dict:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        return tensorrt_ep_options(graph.input[0].name, shape, precision, options)


@BACKENDS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    needs = "pip install 'kompakt[openvino]'"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return f"the openvino package is not installed; {self.needs}"
        return None

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import openvino as ov

        ir = ov.convert_model(str(model))
        # fp16: weights stored in half precision; the CPU plugin computes in fp32/bf16
        ov.save_model(ir, str(bundle / "model.xml"), compress_to_fp16=precision == "fp16")
        return Artefact(
            "model.xml",
            extra=["model.bin"],
            backend_options={"device": "CPU", "threads": options.threads},
            info={"openvino": ov.__version__},
        )


@BACKENDS.register("tensorrt", help="native TensorRT engine (plan) on a CUDA GPU")
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    needs = "pip install 'kompakt[gpu]' (tensorrt) and a CUDA GPU"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return f"the tensorrt package is not installed; {self.needs}"
        try:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        except ImportError:
            return "torch with CUDA is needed for TensorRT buffers"
        return None

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        from kompakt.deploy.tensorrt_backend import TensorRTBuildSettings, build_plan

        low, opt, high = profile_batches(options)
        settings = TensorRTBuildSettings(
            precision=precision,
            min_batch=low,
            opt_batch=opt,
            max_batch=high,
            workspace_mib=options.workspace_mib,
            optimization_level=options.builder_optimization_level,
        )
        info = build_plan(model, bundle, settings)
        return Artefact(
            "model.plan",
            extra=["timing.cache", "layers.json"],
            backend_options={"settings": settings.to_dict()},
            info=info,
        )


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
            }
        )
    return rows
