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
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{value.name}_fp16"
        for node in graph.node:
            node.input[:] = [half_name if i == value.name else i for i in node.input]
        casts.append(
            helper.make_node(
                "Cast",
                [value.name],
                [half_name],
                to=TensorProto.FLOAT16,
                name=f"cast_{value.name}_to_fp16",
            )
        )
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half_name = f"{value.name}_fp16"
        for node in graph.node:
            node.output[:] = [half_name if o == value.name else o for o in node.output]
        graph.node.append(
            helper.make_node(
                "Cast",
                [half_name],
                [value.name],
                to=TensorProto.FLOAT,
                name=f"cast_{value.name}_to_fp32",
            )
        )
    del graph.value_info[:]  # stale float32 annotations; shape inference refills them
    return onnx.shape_inference.infer_shapes(model)
