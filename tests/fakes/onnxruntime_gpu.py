"""A stand-in for onnxruntime-gpu's InferenceSession on a machine without a GPU.

It follows onnxruntime's documented behaviour for GPU providers
(https://onnxruntime.ai/docs/execution-providers/ and the Python API's
`get_providers` / `get_provider_graph_assignment_info`): a session asked for providers it cannot
use falls back to the CPU and only `get_providers()` shows it; node placement is reported per
execution provider. Outputs come from a real CPU session of the same graph.
"""

from __future__ import annotations

from typing import ClassVar

import onnxruntime as ort

REAL_SESSION = ort.InferenceSession


class Node:
    def __init__(self, name: str, op_type: str) -> None:
        self.name, self.op_type, self.domain = name, op_type, ""


class Subgraph:
    def __init__(self, ep_name: str, nodes: list[Node]) -> None:
        self.ep_name, self._nodes = ep_name, nodes

    def get_nodes(self) -> list[Node]:
        return self._nodes


# The provider option keys ONNX Runtime 1.24 parses (tensorrt_execution_provider_info.cc,
# cuda_execution_provider_info.cc); any other key is refused at session creation, as there.
EP_OPTION_KEYS = {
    "TensorrtExecutionProvider": frozenset(
        [
            "device_id",
            "user_compute_stream",
            "trt_max_partition_iterations",
            "trt_min_subgraph_size",
            "trt_max_workspace_size",
            "trt_fp16_enable",
            "trt_bf16_enable",
            "trt_int8_enable",
            "trt_int8_calibration_table_name",
            "trt_int8_use_native_calibration_table",
            "trt_dla_enable",
            "trt_dla_core",
            "trt_dump_subgraphs",
            "trt_engine_cache_enable",
            "trt_engine_cache_path",
            "trt_engine_cache_prefix",
            "trt_engine_decryption_enable",
            "trt_engine_decryption_lib_path",
            "trt_force_sequential_engine_build",
            "trt_context_memory_sharing_enable",
            "trt_layer_norm_fp32_fallback",
            "trt_timing_cache_enable",
            "trt_timing_cache_path",
            "trt_force_timing_cache",
            "trt_detailed_build_log",
            "trt_build_heuristics_enable",
            "trt_sparsity_enable",
            "trt_builder_optimization_level",
            "trt_auxiliary_streams",
            "trt_tactic_sources",
            "trt_extra_plugin_lib_paths",
            "trt_profile_min_shapes",
            "trt_profile_max_shapes",
            "trt_profile_opt_shapes",
            "trt_cuda_graph_enable",
            "trt_dump_ep_context_model",
            "trt_ep_context_file_path",
            "trt_ep_context_embed_mode",
            "trt_engine_hw_compatible",
            "trt_onnx_model_folder_path",
            "trt_op_types_to_exclude",
        ]
    ),
    "CUDAExecutionProvider": frozenset(
        [
            "device_id",
            "has_user_compute_stream",
            "user_compute_stream",
            "do_copy_in_default_stream",
            "gpu_mem_limit",
            "arena_extend_strategy",
            "cudnn_conv_algo_search",
            "cudnn_conv_use_max_workspace",
            "cudnn_conv1d_pad_to_nc1d",
            "enable_cuda_graph",
            "enable_skip_layer_norm_strict_mode",
            "prefer_nhwc",
            "use_ep_level_unified_stream",
            "use_tf32",
            "tunable_op_enable",
            "tunable_op_tuning_enable",
            "tunable_op_max_tuning_duration_ms",
            "sdpa_kernel",
            "fuse_conv_bias",
        ]
    ),
}
PLACEMENT_API_SINCE = (1, 24)  # get_provider_graph_assignment_info: absent in 1.23.2


class FakeGpuSession:
    """Configure the class attributes per test: `active` (None: the first provider requested
    is active; a list: what ORT fell back to), `on_cpu` (op types placed on the CPU) and
    `version` (an older one lacks the placement API, as the real wheel does)."""

    active: ClassVar[list[str] | None] = None
    on_cpu: ClassVar[frozenset[str]] = frozenset({"Shape", "Gather", "Unsqueeze", "Concat"})
    created: ClassVar[list[list]] = []  # the provider lists every session was created with
    version: ClassVar[str] = "1.24.1"

    def __getattribute__(self, name: str):
        if name == "get_provider_graph_assignment_info":
            version = tuple(int(p) for p in type(self).version.split(".")[:2])
            if version < PLACEMENT_API_SINCE:
                raise AttributeError(
                    f"'InferenceSession' object has no attribute {name!r} (onnxruntime "
                    f"{type(self).version})"
                )
        return object.__getattribute__(self, name)

    def __init__(self, model, sess_options=None, providers=None, **kwargs) -> None:
        import onnx

        for provider in providers or []:
            if isinstance(provider, tuple):
                name, options = provider
                unknown = sorted(set(options) - EP_OPTION_KEYS.get(name, frozenset(options)))
                if unknown:  # the real session refuses the whole provider list
                    kind = "TensorRT" if name.startswith("Tensorrt") else "CUDA"
                    raise RuntimeError(
                        f"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Invalid {kind} EP option: "
                        f"{unknown[0]}"
                    )
        self.requested = [p[0] if isinstance(p, tuple) else p for p in providers or []]
        FakeGpuSession.created.append(list(providers or []))
        self.real = REAL_SESSION(model, sess_options, providers=["CPUExecutionProvider"])
        proto = onnx.load(model) if isinstance(model, str) else onnx.ModelProto.FromString(model)
        self.nodes = [Node(n.name or n.op_type, n.op_type) for n in proto.graph.node]

    def get_providers(self) -> list[str]:
        return list(self.active) if self.active is not None else self.requested

    def get_provider_graph_assignment_info(self) -> list[Subgraph]:
        gpu = self.get_providers()[0]
        cpu = [n for n in self.nodes if n.op_type in self.on_cpu or gpu == "CPUExecutionProvider"]
        rest = [n for n in self.nodes if n not in cpu]
        return [Subgraph(gpu, rest), Subgraph("CPUExecutionProvider", cpu)]

    def get_inputs(self):
        return self.real.get_inputs()

    def get_outputs(self):
        return self.real.get_outputs()

    def run(self, output_names, feeds, run_options=None):
        return self.real.run(output_names, feeds, run_options)
