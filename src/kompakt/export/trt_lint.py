"""Static TensorRT check of an ONNX graph, runnable without TensorRT or a GPU.

Judges every node against TensorRT's ONNX-parser op list (`trt_supported_ops.txt`, TensorRT
10.15) and the restrictions that apply to the ops kompakt emits (from NVIDIA onnx-tensorrt's
operators.md and the TensorRT developer guide): MaxPool without Indices or dilations, Reduce axes
as initializers, Q/DQ zero-points 0, MatMul float-only, Dropout not training, tensor rank <= 8,
opset 9..24 (9..20 for TensorRT <= 10.1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from kompakt.errors import KompaktError

MAX_RANK = 8
OPSET_RANGE = (9, 24)
OPSET_TRT_10_1 = 20
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
DQ_INPUT_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.INT4,
}
REDUCE_OPS = {
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
}


def supported_ops() -> frozenset[str]:
    """The op types TensorRT's ONNX parser supports (packaged copy of the parser's op table)."""
    text = resources.files("kompakt.export").joinpath("trt_supported_ops.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and line[0] != "#")


@dataclass
class LintIssue:
    severity: str  # "error" or "warning"
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity}: {where}: {self.reason}"


@dataclass
class LintReport:
    path: str
    opset: int
    issues: list[LintIssue] = field(default_factory=list)
    dynamic_inputs: dict[str, list] = field(default_factory=dict)

    @property
    def errors(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "opset": self.opset,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [asdict(i) for i in self.issues],
            "dynamic_inputs": self.dynamic_inputs,
        }

    def __str__(self) -> str:
        lines = [str(i) for i in self.issues]
        if self.dynamic_inputs:
            dyn = ", ".join(f"{k}{v}" for k, v in self.dynamic_inputs.items())
            lines.append(f"dynamic inputs (need an optimisation profile): {dyn}")
        lines.append(
            f"TensorRT lint: {len(self.errors)} error(s), {len(self.warnings)} warning(s), "
            f"opset {self.opset}"
        )
        return "\n".join(lines)


def _dims(value_info: onnx.ValueInfoProto) -> list | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
        for d in tensor_type.shape.dim
    ]


def lint_trt(model_or_path: str | Path | onnx.ModelProto) -> LintReport:
    """Lint an ONNX model for TensorRT's ONNX parser.

    Raises:
        KompaktError: if the file cannot be read as ONNX.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        model, path = model_or_path, "<model>"
    else:
        path = str(model_or_path)
        try:
            model = onnx.load(path)
        except Exception as error:
            raise KompaktError(f"cannot read ONNX file {path}: {error}") from None
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # lint what we can without inferred shapes
        inferred = model
    graph = inferred.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = LintReport(path=path, opset=opset)
    add = report.issues.append

    low, high = OPSET_RANGE
    if not low <= opset <= high:
        add(LintIssue("error", "model", "", f"opset {opset} is outside TensorRT's {low}..{high}"))
    elif opset > OPSET_TRT_10_1:
        add(
            LintIssue(
                "warning",
                "model",
                "",
                f"opset {opset} needs TensorRT >= 10.2 (10.0/10.1 accept 9..20)",
            )
        )

    init = {i.name: i for i in graph.initializer}
    constants = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*graph.input, *graph.value_info, *graph.output]
    }
    types.update({name: t.data_type for name, t in init.items()})
    ops = supported_ops()

    def const_array(name: str) -> np.ndarray | None:
        if name in init:
            return numpy_helper.to_array(init[name])
        node = constants.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    for index, node in enumerate(graph.node):
        name = node.name or f"node_{index}"
        op = node.op_type
        err = lambda reason, n=name, o=op: add(LintIssue("error", n, o, reason))  # noqa: E731
        warn = lambda reason, n=name, o=op: add(LintIssue("warning", n, o, reason))  # noqa: E731
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            err(f"custom domain {node.domain!r}: TensorRT imports it only through a plugin")
            continue
        if op not in ops:
            err(f"{op} is not supported by TensorRT's ONNX parser")
            continue
        if op == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                err("the Indices output is unsupported")
            if any(d != 1 for d in attrs.get("dilations", [])):
                err(f"dilations {attrs['dilations']} must be all 1")
        if op in ("AveragePool", "LpPool") and any(d != 1 for d in attrs.get("dilations", [])):
            err(f"dilations {attrs['dilations']} must be all 1")
        reduce_axes = node.input[1] if op in REDUCE_OPS and len(node.input) > 1 else ""
        if reduce_axes and reduce_axes not in init:
            err("axes must be an initializer")
        if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zero_point = const_array(node.input[2])
            if zero_point is None:
                err("the zero-point must be a constant")
            elif np.any(zero_point != 0):
                err(
                    f"zero-point must be 0 (symmetric quantisation), found {zero_point.ravel()[:4]}"
                )
        if op == "DequantizeLinear":
            dtype = types.get(node.input[0])
            if dtype and dtype not in DQ_INPUT_TYPES:
                name = onnx.TensorProto.DataType.Name(dtype)
                err(
                    f"input {node.input[0]} is {name}; TensorRT's DequantizeLinear takes INT8, FP8 "
                    "or INT4 only (quantise biases off: QuantizeBias=False)"
                )
        if op == "MatMul":
            for tensor in node.input:
                if tensor in types and types[tensor] and types[tensor] not in FLOAT_TYPES:
                    dtype = onnx.TensorProto.DataType.Name(types[tensor])
                    err(f"input {tensor} is {dtype}; TensorRT's MatMul takes float types only")
        if op == "Einsum":
            warn(
                "Einsum with ellipsis/broadcasting is fully supported only from TensorRT 10.12; "
                "prefer reshape/transpose/matmul"
            )
        if op == "Dropout" and len(node.input) > 2 and node.input[2]:
            training = const_array(node.input[2])
            if training is None or bool(np.any(training)):
                err("training_mode must be an initializer that is False")
        axes = node.input[1] if op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 else ""
        if axes and const_array(axes) is None:
            warn("axes are not constant (supported only from TensorRT 10.7)")

    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(vi)
        if dims is not None and len(dims) > MAX_RANK:
            producer = next((n for n in graph.node if vi.name in n.output), None)
            add(
                LintIssue(
                    "error",
                    producer.name if producer else vi.name,
                    producer.op_type if producer else "",
                    f"tensor {vi.name} has rank {len(dims)}; TensorRT's limit is {MAX_RANK}",
                )
            )
    for tensor in graph.initializer:
        if len(tensor.dims) > MAX_RANK:
            add(
                LintIssue(
                    "error",
                    tensor.name,
                    "initializer",
                    f"rank {len(tensor.dims)} exceeds TensorRT's limit of {MAX_RANK}",
                )
            )
    for vi in graph.input:
        if vi.name in init:
            continue
        dims = _dims(vi) or []
        if any(isinstance(d, str) for d in dims):
            report.dynamic_inputs[vi.name] = dims
    return report


def save_lint(report: LintReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
