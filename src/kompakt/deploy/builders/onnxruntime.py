"""ONNX Runtime builders: the CPU execution provider, and the CUDA / TensorRT providers."""

from __future__ import annotations

from pathlib import Path

from kompakt.deploy.builders.base import (
    BACKENDS,
    Artefact,
    Backend,
    BuildOptions,
    Capabilities,
    profile_batches,
)
from kompakt.errors import ConfigError


@BACKENDS.register("onnxruntime", help="ONNX Runtime CPU execution provider")
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    capabilities = Capabilities(precisions=("fp32", "int8"), device="cpu")

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import onnxruntime as ort

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
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), device="gpu")


@BACKENDS.register("onnxruntime-tensorrt", help="ONNX Runtime TensorRT execution provider")
class OnnxRuntimeTensorrtBackend(_OrtGpuBackend):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"), device="gpu", fp16_graph=True, int8_float_bias=True
    )

    def provider_options(self, model: Path, precision: str, options: BuildOptions) -> dict:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        return tensorrt_ep_options(graph.input[0].name, shape, precision, options)
