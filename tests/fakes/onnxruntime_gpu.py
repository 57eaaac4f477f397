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


class FakeGpuSession:
    """Configure the class attributes per test: `active` (None: the first provider requested
    is active; a list: what ORT fell back to) and `on_cpu` (op types placed on the CPU)."""

    active: ClassVar[list[str] | None] = None
    on_cpu: ClassVar[frozenset[str]] = frozenset({"Shape", "Gather", "Unsqueeze", "Concat"})
    created: ClassVar[list[list]] = []  # the provider lists every session was created with

    def __init__(self, model, sess_options=None, providers=None, **kwargs) -> None:
        import onnx

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
