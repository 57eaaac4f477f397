"""FP16 graphs for strongly typed runtimes (TensorRT, the ORT TensorRT / CUDA providers).

ONNX Runtime ships a maintained converter (`onnxruntime.transformers.float16`): it handles
Constant nodes, ConstantOfShape, Resize scales, graph outputs that other nodes also read, and
keeps the graph topologically sorted, cases a hand-written pass got wrong. kompakt only fixes
its options: float32 inputs and outputs (apps feed and read float32 whatever the engine computes
in) and ops whose float16 forms lose what they compute kept in float32.
"""

from __future__ import annotations

import onnx

# Kept in float32: shape arithmetic and ops whose fp16 results overflow or lose their meaning
# (Resize's scales, reductions of many terms); the converter inserts the Casts around them.
FP32_OPS = ["Resize", "Range", "ReduceSum", "ReduceMean", "CumSum"]


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16 with float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    copy = onnx.ModelProto.FromString(model.SerializeToString())
    _constants_as_tensors(copy.graph)  # the converter reads only Constant's `value` tensor
    half = convert_float_to_float16(
        copy,
        keep_io_types=True,
        op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *FP32_OPS}),
        disable_shape_infer=False,
    )
    _sort_topologically(half.graph)  # the converter appends its input Casts at the end
    onnx.checker.check_model(half)
    return half


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """Constant nodes given as value_float / value_floats rewritten to an equal `value` tensor,
    which the converter does convert (it leaves the scalar forms float32, and the graph then
    mixes float16 and float32 inputs on one op)."""
    from onnx import TensorProto, helper

    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attr in list(node.attribute):
            if attr.name == "value_float":
                tensor = helper.make_tensor("value", TensorProto.FLOAT, [], [attr.f])
            elif attr.name == "value_floats":
                tensor = helper.make_tensor(
                    "value", TensorProto.FLOAT, [len(attr.floats)], attr.floats
                )
            else:
                continue
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("value", tensor))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it, and
    TensorRT's parser reads nodes in order); stable for graphs that are already sorted."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            names = [n.name or n.op_type for n in pending[:5]]
            raise ValueError(f"the fp16 graph has a cycle or a missing input near {names}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    del graph.node[:]
    graph.node.extend(ordered)
