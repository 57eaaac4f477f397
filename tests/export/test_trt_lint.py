import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clirun import kompakt
from kompakt.export import lint_trt
from kompakt.export.trt_lint import supported_ops


def model_of(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def fvi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_supported_op_list_is_packaged():
    ops = supported_ops()
    assert len(ops) == 158 and {"MatMul", "Conv", "Reshape"} <= ops and "QLinearConv" not in ops


def test_clean_graph_passes_and_lists_dynamic_inputs():
    shape = numpy_helper.from_array(np.array([-1, 16], np.int64), "s")
    m = model_of(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
        [fvi("x", ["batch", 4, 4])],
        [fvi("y", ["batch", 16])],
        [shape],
    )
    report = lint_trt(m)
    assert report.ok and not report.issues and report.dynamic_inputs == {"x": ["batch", 4, 4]}


def test_rank_9_reshape_is_an_error():
    shape = numpy_helper.from_array(np.array([1] * 8 + [-1], np.int64), "s")
    m = model_of(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="deep")],
        [fvi("x", [2, 256])],
        [fvi("y", None)],
        [shape],
    )
    errors = lint_trt(m).errors
    assert any(e.node == "deep" and "rank 9" in e.reason for e in errors)


def test_maxpool_with_indices_is_an_error():
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool")
    m = model_of(
        [node],
        [fvi("x", [1, 1, 4, 4])],
        [fvi("y", [1, 1, 2, 2]), fvi("idx", [1, 1, 2, 2], TensorProto.INT64)],
    )
    assert any("Indices output is unsupported" in e.reason for e in lint_trt(m).errors)


@pytest.mark.parametrize("op", ["QLinearConv", "DynamicQuantizeLinear"])
def test_unsupported_quantisation_ops_are_errors(op):
    node = helper.make_node(op, ["x"], ["y"], name="q")
    m = model_of([node], [fvi("x", [1])], [fvi("y", [1])])
    assert [str(e) for e in lint_trt(m).errors] == [
        f"error: q ({op}): {op} is not supported by TensorRT's ONNX parser"
    ]


def test_opset_8_is_an_error_and_opset_21_a_warning():
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    old = model_of([node], [fvi("x", [1])], [fvi("y", [1])], opset=8)
    assert any("opset 8 is outside TensorRT's 9..24" in e.reason for e in lint_trt(old).errors)
    new = model_of([node], [fvi("x", [1])], [fvi("y", [1])], opset=21)
    assert lint_trt(new).ok and "TensorRT >= 10.2" in lint_trt(new).warnings[0].reason


def test_einsum_is_a_warning():
    node = helper.make_node("Einsum", ["a", "b"], ["c"], equation="ij,jk->ik", name="e")
    m = model_of([node], [fvi("a", [2, 3]), fvi("b", [3, 4])], [fvi("c", [2, 4])])
    report = lint_trt(m)
    assert report.ok and "10.12" in report.warnings[0].reason


def test_nonzero_zero_point_and_integer_matmul_are_errors():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    q = helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant")
    mm = helper.make_node("MatMul", ["i", "j"], ["k"], name="imm")
    m = model_of(
        [q, mm],
        [fvi("x", [4]), fvi("i", [2, 2], TensorProto.INT32), fvi("j", [2, 2], TensorProto.INT32)],
        [fvi("q", [4], TensorProto.INT8), fvi("k", [2, 2], TensorProto.INT32)],
        [scale, zp],
    )
    reasons = {e.node: e.reason for e in lint_trt(m).errors}
    assert "zero-point must be 0" in reasons["quant"] and "float types only" in reasons["imm"]


def test_cli_exits_1_on_errors(tmp_path):
    node = helper.make_node("QLinearConv", ["x"], ["y"], name="q")
    path = tmp_path / "bad.onnx"
    onnx.save(model_of([node], [fvi("x", [1])], [fvi("y", [1])]), path)
    proc = kompakt("lint-trt", path)
    assert proc.returncode == 1 and "QLinearConv is not supported" in proc.stdout
