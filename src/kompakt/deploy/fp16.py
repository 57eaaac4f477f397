"""FP16 graphs for strongly typed runtimes: float initializers to half, casts at the edges.

Inputs and outputs stay float32 (a Cast after each input and before each output), so apps feed
and read float32 whatever the engine computes in.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16 with float32 inputs and outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            half = numpy_helper.to_array(tensor).astype(np.float16)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(half, tensor.name))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(
                        numpy_helper.from_array(
                            numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name
                        )
                    )
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    first, last = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            first.append(_edge_cast(graph, value.name, TensorProto.FLOAT16, "input"))
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            last.append(_edge_cast(graph, value.name, TensorProto.FLOAT, "output"))
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; shape inference refills them
    return onnx.shape_inference.infer_shapes(model)


def _edge_cast(graph: onnx.GraphProto, name: str, to: int, side: str) -> onnx.NodeProto:
    """Rewire the graph so `name` (a graph input or output) keeps float32 through a Cast."""
    half = f"{name}_fp16"
    for node in graph.node:
        if side == "input":
            node.input[:] = [half if i == name else i for i in node.input]
        else:
            node.output[:] = [half if o == name else o for o in node.output]
    source, target = ([name], [half]) if side == "input" else ([half], [name])
    return helper.make_node("Cast", source, target, to=to, name=f"cast_{name}_{side}")
