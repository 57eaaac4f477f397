"""ONNX Runtime builders: the CPU execution provider, and the CUDA / TensorRT providers."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from kompakt.deploy.builders.base import (
    BACKENDS,
    Artefact,
    Backend,
    BuildOptions,
    Capabilities,
    profile_batches,
)
from kompakt.errors import ConfigError
from kompakt.machine import package_version

MIN_ORT_GPU = "1.24"  # the first onnxruntime-gpu with the placement API (pyproject's gpu extra)


@BACKENDS.register("onnxruntime", help="ONNX Runtime CPU execution provider")
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    distributions = ("onnxruntime", "onnxruntime-gpu")
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


def installed_ort_wheels() -> list[str]:
    """The ONNX Runtime distributions installed (ONNX Runtime's documentation: only one may be;
    they share the `onnxruntime` module and whichever was installed last wins)."""
    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
    return [name for name in names if package_version(name)]


# the shared library each GPU provider loads (it links CUDA / cuDNN / TensorRT at load time)
EP_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


def ort_gpu_reason(provider: str) -> str | None:
    """Why an ONNX Runtime GPU provider cannot run here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    wheels = installed_ort_wheels()
    if "onnxruntime-gpu" in wheels and len(wheels) > 1:
        others = " ".join(w for w in wheels if w != "onnxruntime-gpu")
        return (
            f"{' and '.join(wheels)} are installed together and share one module; keep one: "
            f"pip uninstall -y {others} onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    if provider not in ort.get_available_providers():
        return (
            f"{provider} is not in this onnxruntime build; needs `pip install "
            "'kompakt[gpu]'` (onnxruntime-gpu, without the CPU onnxruntime) and a CUDA GPU"
        )
    return _load_failure(ort, provider)


def _load_failure(ort, provider: str) -> str | None:
    """Listed is not loadable: the provider library links CUDA (and TensorRT) when it loads,
    so load it here and report the missing library by name."""
    import ctypes
    import os

    library = os.path.join(os.path.dirname(ort.__file__), "capi", EP_LIBRARIES[provider])
    if not os.path.isfile(library):
        return None  # a build that links the provider statically
    try:
        ctypes.CDLL(library)
    except OSError as error:
        return f"{provider} cannot load ({error}); install the CUDA / TensorRT libraries it links"
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


# ops that do the arithmetic; ORT keeps shape computations on the CPU on purpose
COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "MatMulInteger", "ConvInteger"}
)


def placement(session) -> dict:
    """Which provider runs which nodes (the session must record its EP graph assignment):
    {"nodes_by_provider": {provider: count}, "cpu_compute": ["name (op)", ...]}."""
    by_provider: dict[str, int] = {}
    cpu_compute = []
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        by_provider[subgraph.ep_name] = by_provider.get(subgraph.ep_name, 0) + len(nodes)
        if subgraph.ep_name == "CPUExecutionProvider":
            cpu_compute += [f"{n.name} ({n.op_type})" for n in nodes if n.op_type in COMPUTE_OPS]
    return {"nodes_by_provider": by_provider, "cpu_compute": cpu_compute}


class _OrtGpuBackend(Backend):
    distributions = ("onnxruntime-gpu", "tensorrt")
    provider = ""
    runner = ""  # the runtime runner whose provider list the check must use
    needs = "pip install 'kompakt[gpu]' (onnxruntime-gpu) and a CUDA GPU"

    def unavailable_reason(self) -> str | None:
        return ort_gpu_reason(self.provider)

    def provider_options(self, model: Path, precision: str, options: BuildOptions) -> dict:
        return {"device_id": options.device_id}

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import onnx
        import onnxruntime as ort

        from kompakt.runtime.backends import RUNNERS

        provider_options = self.provider_options(model, precision, options)
        (bundle / "trt_cache").mkdir(exist_ok=True)
        manifest = {"backend_options": {"provider_options": provider_options}}
        # the runtime's own provider list (TensorRT EP: TRT, CUDA, CPU), so the placement
        # recorded here is the placement the app gets
        providers = RUNNERS.get(self.runner).provider_list(bundle / model.name, manifest)
        session_options = ort.SessionOptions()
        session_options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        session = ort.InferenceSession(str(model), session_options, providers=providers)
        active = session.get_providers()
        if active[0] != self.provider:
            raise ConfigError(
                f"{self.provider} did not activate (ONNX Runtime fell back to {active})"
            )
        if not hasattr(session, "get_provider_graph_assignment_info"):
            # absent from the 1.23.2 wheel, present from 1.24.1 (checked in the wheels)
            raise ConfigError(
                f"onnxruntime {ort.__version__} cannot report node placement "
                "(InferenceSession.get_provider_graph_assignment_info); kompakt needs "
                f"onnxruntime-gpu >= {MIN_ORT_GPU} to prove the GPU runs the model: pip install "
                f"'onnxruntime-gpu>={MIN_ORT_GPU}'"
            )
        where = placement(session)
        if where["cpu_compute"]:
            raise ConfigError(
                f"{len(where['cpu_compute'])} compute nodes would run on the CPU under "
                f"{self.provider} ({', '.join(where['cpu_compute'][:5])}); lint the graph "
                "(kompakt lint-trt) or deploy to onnxruntime for a CPU target"
            )
        total = len(onnx.load(str(model), load_external_data=False).graph.node)
        return Artefact(
            model.name,
            backend_options={"provider_options": provider_options},
            info={
                "nodes_by_provider": where["nodes_by_provider"],
                "nodes_total": total,
                "onnxruntime": ort.__version__,
                "tensorrt": package_version("tensorrt"),
            },
        )


@BACKENDS.register("onnxruntime-cuda", help="ONNX Runtime CUDA execution provider")
class OnnxRuntimeCudaBackend(_OrtGpuBackend):
    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    runner = "onnxruntime-cuda"
    # fp16 runs an FP16 graph (the CUDA EP computes in the graph's types); INT8 is refused: the
    # CUDA EP runs a Q/DQ graph in float plus the Q/DQ work
    capabilities = Capabilities(precisions=("fp32", "fp16"), device="gpu", fp16_graph=True)
    precision_notes: ClassVar[dict[str, str]] = {
        "int8": "the CUDA execution provider runs Q/DQ graphs in float (slower, not INT8); "
        "deploy INT8 to onnxruntime-tensorrt or tensorrt"
    }


@BACKENDS.register("onnxruntime-tensorrt", help="ONNX Runtime TensorRT execution provider")
class OnnxRuntimeTensorrtBackend(_OrtGpuBackend):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
    runner = "onnxruntime-tensorrt"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"), device="gpu", fp16_graph=True, int8_float_bias=True
    )

    def provider_options(self, model: Path, precision: str, options: BuildOptions) -> dict:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        return tensorrt_ep_options(graph.input[0].name, shape, precision, options)
