"""ONNX Runtime runners: the CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from kompakt.errors import BackendUnavailable
from kompakt.runtime.backends.base import RUNNERS, EngineFiles, require
from kompakt.runtime.manifest import BundleError, confined

# TensorRT EP options a bundle may set. Anything else (notably the options that load a shared
# library: trt_engine_decryption_lib_path, trt_extra_plugin_lib_paths) is refused: a manifest
# never chooses code to run.
TRT_EP_OPTIONS = frozenset(
    {
        "device_id",
        "trt_max_workspace_size",
        "trt_fp16_enable",
        "trt_bf16_enable",
        "trt_int8_enable",
        "trt_engine_cache_enable",
        "trt_engine_cache_path",
        "trt_timing_cache_enable",
        "trt_timing_cache_path",
        "trt_builder_optimization_level",
        "trt_profile_min_shapes",
        "trt_profile_opt_shapes",
        "trt_profile_max_shapes",
        "trt_cuda_graph_enable",
        "trt_auxiliary_streams",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_context_memory_sharing_enable",
        "trt_min_subgraph_size",
    }
)
CUDA_EP_OPTIONS = frozenset(
    {
        "device_id",
        "gpu_mem_limit",
        "arena_extend_strategy",
        "cudnn_conv_algo_search",
        "cudnn_conv_use_max_workspace",
        "do_copy_in_default_stream",
        "enable_cuda_graph",
        "prefer_nhwc",
        "use_tf32",
    }
)


def _checked(options: dict, allowed: frozenset, provider: str) -> dict:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BundleError(
            f"the manifest sets {provider} options kompakt does not allow: {unknown}; rebuild "
            "the bundle with kompakt deploy"
        )
    return dict(options)


@RUNNERS.register("onnxruntime", help="ONNX Runtime, CPU execution provider")
class OnnxRuntimeRunner:
    """ONNX Runtime with one execution provider (CPU, CUDA or TensorRT); thread-safe `run`."""

    sdk = "onnxruntime"
    extra = "cpu"  # the CPU wheel; the GPU runners need the gpu extra
    tuning = ("spin", "inter_op_threads")

    def __init__(
        self,
        files: EngineFiles,
        manifest: dict,
        threads: int | None,
        spin: bool = False,
        inter_op_threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", self.extra, f"the {manifest['backend']} backend")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        # spinning off by default: a spinning pool burns the cores a co-located app needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        providers = type(self).provider_list(files.path, manifest)
        self.session = _session(ort, files, options, providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        active = self.session.get_providers()
        if active[0] != wanted:  # ORT only warns and falls back to the CPU
            raise BackendUnavailable(
                f"{wanted} is not active (ONNX Runtime fell back to {active}); install "
                "onnxruntime-gpu with CUDA (pip install 'kompakt[gpu]') on a GPU machine"
            )
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def provider_list(cls, path: Path, manifest: dict) -> list:
        return ["CPUExecutionProvider"]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


def _session(ort, files: EngineFiles, options, providers):
    """A session on the checked bytes. External data (a model over 2 GB) comes from memory too:
    from bytes, ONNX Runtime would resolve an external file against the working directory, so
    it is pointed at an empty folder and only the bundle's listed, hashed files exist for it."""
    extra = files.extra()
    if extra:
        names = list(extra)
        options.add_external_initializers_from_files_in_memory(
            names, [extra[n] for n in names], [len(extra[n]) for n in names]
        )
    with tempfile.TemporaryDirectory(prefix="kompakt-noext-") as empty:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", empty
        )
        return ort.InferenceSession(files.data, options, providers=providers)


@RUNNERS.register("onnxruntime-cuda", help="ONNX Runtime, CUDA execution provider")
class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    extra = "gpu"

    @classmethod
    def provider_list(cls, path: Path, manifest: dict) -> list:
        options = manifest.get("backend_options", {}).get("provider_options", {})
        options = _checked(options, CUDA_EP_OPTIONS, "CUDA execution provider")
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


@RUNNERS.register("onnxruntime-tensorrt", help="ONNX Runtime, TensorRT execution provider")
class OnnxRuntimeTensorrtRunner(OnnxRuntimeRunner):
    extra = "gpu"

    @classmethod
    def provider_list(cls, path: Path, manifest: dict) -> list:
        options = manifest.get("backend_options", {}).get("provider_options", {})
        options = _checked(options, TRT_EP_OPTIONS, "TensorRT execution provider")
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if key in options:  # caches live inside the bundle
                options[key] = str(confined(path.parent, options[key]))
        return [
            ("TensorrtExecutionProvider", options),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
