import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kompakt.inspect import format_inspection, inspect_model, inspect_onnx
from kompakt.layers import TTLinear
from kompakt.models import build_model


def test_inspect_model_counts_params_and_macs():
    model = build_model("lenet5", 10, 1, 28)
    report = inspect_model(model, (1, 28, 28))
    first = report["layers"][0]
    assert first["output_shape"] == [6, 28, 28]
    assert first["macs"] == 6 * 28 * 28 * 25 and first["params"] == 156
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    assert "total:" in format_inspection(report)


def test_inspect_reports_compression_of_factored_layers():
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), TTLinear(64, 36, ranks=2))
    row = inspect_model(model, (1, 8, 8))["layers"][-1]
    assert row["type"] == "TTLinear" and row["compression"] > 1
    assert row["macs"] == model[1].forward_macs(1)


def test_inspect_onnx_graph(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((64, 5), np.float32), "m")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat"),
            helper.make_node("MatMul", ["r", "m"], ["logits"], name="fc"),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [w, m, shape],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    report = inspect_onnx(str(path))
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv"]["macs"] == 4 * 4 * 4 * 2 * 9 and rows["fc"]["macs"] == 5 * 64
    assert report["total_params"] == 72 + 320 + 2


def test_inspect_counts_meta_head_macs_exactly():
    import torch

    from kompakt.layers import MetaHead

    head = MetaHead(64, 20, groups=4, meta_out=2)  # L = 10 features per output group
    row = inspect_model(torch.nn.Sequential(torch.nn.Flatten(), head), (1, 8, 8))["layers"][-1]
    assert row["macs"] == 64 * 10 + 10 * 4 * 2  # grouped FCs (K * L) + Meta (L * G * M)


def test_inspect_onnx_counts_shared_weights_once_and_no_shape_constants(tmp_path, lenet_bundle):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from kompakt.inspect import inspect_onnx

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w"], ["h2"], name="again"),  # the same weight
            helper.make_node("Reshape", ["h2", "shape"], ["y"], name="flat"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight, shape],
    )
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph), path)
    report = inspect_onnx(str(path))
    assert sum(row["params"] for row in report["layers"]) == 16
    bundle_report = inspect_onnx(str(lenet_bundle))  # a bundle: its source graph
    assert sum(row["params"] for row in bundle_report["layers"]) > 0
