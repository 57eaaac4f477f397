import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bundles import bundle
from kompakt.deploy import BACKENDS, BuildOptions, DeployConfig, build_bundle, list_backends
from kompakt.deploy.builders import profile_batches
from kompakt.deploy.builders.onnxruntime import tensorrt_ep_options
from kompakt.deploy.builders.tensorrt import TensorRTBuildSettings
from kompakt.deploy.fp16 import convert_to_fp16
from kompakt.deploy.quantize import quantize_int8
from kompakt.errors import ConfigError, KompaktError
from kompakt.export import lint_trt
from kompakt.runtime import BackendUnavailable, load
from kompakt.runtime.backends import RUNNERS
from kompakt.runtime.backends.tensorrt import check_fingerprint

# every registered CPU backend in every precision it declares: a new backend is tested here
CPU_BUILDS = [
    (name, precision)
    for name in BACKENDS.names()
    if BACKENDS.get(name).capabilities.device == "cpu"
    for precision in BACKENDS.get(name).capabilities.precisions
]


@pytest.mark.parametrize("backend, precision", CPU_BUILDS)
def test_every_cpu_backend_and_precision_builds_runs_and_keeps_parity(
    lenet_onnx, tmp_path, backend, precision
):
    if BACKENDS.get(backend)().unavailable_reason():
        pytest.skip(BACKENDS.get(backend)().unavailable_reason())
    out = bundle(
        lenet_onnx,
        tmp_path / "b",
        backend=backend,
        precision=precision,
        calib_data="digits" if precision == "int8" else None,
    )
    manifest = json.loads((out / "kompakt.json").read_text())
    parity = manifest["parity"]["vs_source_onnx"]
    if precision == "fp32":
        assert parity["max_rel"] < 1e-4 and parity["top1_agreement"] == 1.0
    else:  # lossy: bounded error and near-identical decisions
        assert parity["max_rel"] < 0.1 and parity["top1_agreement"] >= 0.95
    assert manifest["accuracy"]["samples"] == 270  # the digits val split
    assert abs(manifest["accuracy"]["drop_points"]) <= 3
    with load(out) as engine:
        x = np.zeros((3, 1, 8, 8), np.float32)
        assert engine.run(x).shape == (3, 10)


def test_int8_qdq_is_symmetric_and_passes_the_trt_lint_only_with_float_biases(lenet_onnx, tmp_path):
    out = bundle(
        lenet_onnx,
        tmp_path / "q",
        precision="int8",
        calib_data="digits",
        calib_samples=64,
        calib_method="entropy",
    )
    manifest = json.loads((out / "kompakt.json").read_text())
    graph = onnx.load(out / manifest["artifact"])  # the one INT8 graph the bundle ships
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(
        {"model.onnx", manifest["artifact"]}
    )
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the CPU bundle keeps ORT's INT32 bias DequantizeLinear (fused by ORT's CPU kernels), which
    # TensorRT's parser rejects: the lint must say so, and the TensorRT backends' graph passes
    report = lint_trt(graph)
    assert not report.ok and all(i.op == "DequantizeLinear" for i in report.errors)
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    quantize_int8(lenet_onnx, tmp_path / "trt.onnx", calib, float_bias=True)
    report = lint_trt(tmp_path / "trt.onnx")
    assert report.ok, str(report)
    assert manifest["quantization"]["calib_samples"] == 64
    assert manifest["quantization"]["calib_method"] == "entropy"


def test_accuracy_guard_excludes_layers_and_reports_when_it_cannot(lenet_onnx, tmp_path):
    with pytest.raises(KompaktError, match="even with every weight layer kept in float"):
        bundle(
            lenet_onnx,
            tmp_path / "g",
            precision="int8",
            calib_data="digits",
            max_accuracy_drop=-1.0,
        )
    assert not (tmp_path / "g").exists()
    out = bundle(
        lenet_onnx, tmp_path / "ok", precision="int8", calib_data="digits", max_accuracy_drop=50.0
    )
    guard = json.loads((out / "kompakt.json").read_text())["quantization"]["accuracy_guard"]
    assert guard["met"] and guard["excluded_nodes"] == []


def test_existing_bundle_needs_force(lenet_onnx, tmp_path):
    out = bundle(lenet_onnx, tmp_path / "b")
    with pytest.raises(ConfigError, match="exists; pass --force"):
        bundle(lenet_onnx, out)
    bundle(lenet_onnx, out, force=True, precision="int8", calib_data="digits")
    assert json.loads((out / "kompakt.json").read_text())["precision"] == "int8"
    left = [p.name for p in tmp_path.iterdir() if ".retired-" not in p.name]
    assert left == ["b"]  # no temp dirs left behind (the replaced bundle is retired, see below)


def test_int8_without_calibration_data_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ConfigError, match="INT8 needs calibration data"):
        build_bundle(path, tmp_path / "b", DeployConfig(precision="int8"))


def test_pytorch_parity_recorded_with_ckpt(lenet_onnx, tmp_path):
    ckpt = lenet_onnx.parent / "run" / "best.pt"
    out = bundle(lenet_onnx, tmp_path / "b", ckpt=str(ckpt))
    parity = json.loads((out / "kompakt.json").read_text())["parity"]["vs_pytorch"]
    assert parity["max_rel"] < 1e-4 and parity["top1_agreement"] == 1.0


def test_unavailable_backends_are_listed_with_the_fix():
    rows = {row["name"]: row for row in list_backends()}
    assert set(rows) == set(BACKENDS.names()) == set(RUNNERS.names())  # a builder and a runner
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(rows)
    for row in rows.values():
        assert row["available"] or "pip install" in row["reason"] or "GPU" in row["reason"]
    # versions by distribution name, the names gpu_smoke's preflight prints (issue 27)
    from kompakt.machine import package_version

    assert rows["onnxruntime"]["versions"]["onnxruntime"] == package_version("onnxruntime")
    assert "tensorrt" not in rows["tensorrt"]["versions"]  # not installed: not shown


def test_unavailable_backend_refuses_to_build(lenet_onnx, tmp_path):
    unavailable = [r["name"] for r in list_backends() if not r["available"]]
    if not unavailable:
        pytest.skip("every backend is available here")
    with pytest.raises(BackendUnavailable, match="unavailable"):
        build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend=unavailable[0]))


def test_fp16_graph_keeps_float32_edges_and_close_outputs(lenet_onnx):
    from onnx.reference import ReferenceEvaluator

    source = onnx.load(lenet_onnx)
    half = convert_to_fp16(source)
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(lenet_onnx).run(None, {"input": x})[0]
    got = ReferenceEvaluator(half).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max() + 1e-3


def test_fp16_handles_constants_and_an_output_other_nodes_read():
    """The cases a hand-written pass got wrong: a Constant with value_float, ConstantOfShape,
    and a graph output that is also an input of later nodes."""
    nodes = [
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),  # a graph output, read below
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["ones"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("Add", ["doubled", "ones"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = convert_to_fp16(model)
    onnx.checker.check_model(half)
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT] * 2
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    doubled, y = ort.InferenceSession(half.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(doubled, 2 * x)
    np.testing.assert_allclose(y, 2 * x + 1)


# -- TensorRT / GPU configuration that runs before any CUDA call ----------------------------


def test_profile_batches_validation():
    assert profile_batches(BuildOptions(min_batch=1, max_batch=64)) == (1, 8, 64)
    assert profile_batches(BuildOptions(min_batch=4, opt_batch=16, max_batch=32)) == (4, 16, 32)
    with pytest.raises(ConfigError, match=r"min .* <= opt"):
        profile_batches(BuildOptions(min_batch=8, opt_batch=4, max_batch=16))


def test_trt_ep_options_put_caches_in_the_bundle_and_set_profiles():
    opts = tensorrt_ep_options(
        "input", ["batch", 3, 32, 32], "fp16", BuildOptions(min_batch=1, opt_batch=8, max_batch=64)
    )
    assert opts["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert opts["trt_profile_opt_shapes"] == "input:8x3x32x32"
    assert opts["trt_profile_max_shapes"] == "input:64x3x32x32"
    assert opts["trt_engine_cache_path"] == "trt_cache" and opts["trt_fp16_enable"] is True
    assert "trt_int8_enable" not in opts
    with pytest.raises(ConfigError, match="static non-batch dims"):
        tensorrt_ep_options("input", ["batch", 3, "h", "w"], "fp32", BuildOptions())


def test_trt_settings_profile_and_version_dependent_precision():
    settings = TensorRTBuildSettings(precision="int8", min_batch=1, opt_batch=4, max_batch=16)
    assert settings.profile([-1, 3, 32, 32]) == ((1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    for version in ("10.3.0", "11.4.0.106"):
        plan = settings.precision_plan(version)
        assert plan == {"strongly_typed": True, "builder_flags": [], "graph": "qdq"}
    legacy = TensorRTBuildSettings(precision="fp16", implicit_precision=True)
    assert legacy.precision_plan("10.8.0") == {
        "strongly_typed": False,
        "builder_flags": ["FP16"],
        "graph": "fp32",
    }
    with pytest.raises(ConfigError, match="TensorRT 11 has no FP16/INT8 builder flags"):
        legacy.precision_plan("11.0.0")
    with pytest.raises(ConfigError, match="too old"):
        settings.precision_plan("8.6.1")
    with pytest.raises(ConfigError, match="static dims"):
        settings.profile([-1, 3, -1, 32])
    with pytest.raises(ConfigError, match="precision must be one of"):
        TensorRTBuildSettings(precision="int4")


def test_trt_plan_from_another_gpu_is_refused():
    built = {"tensorrt": "10.8.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    check_fingerprint(built, dict(built))
    with pytest.raises(KompaktError, match=r"built for gpu .NVIDIA H100.*rebuild it here"):
        check_fingerprint(built, {**built, "gpu": "NVIDIA L4", "compute_capability": "8.9"})


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_ort_gpu_bundles_run_on_the_gpu(lenet_onnx, tmp_path, backend):
    out = bundle(lenet_onnx, tmp_path / "g", backend=backend)
    manifest = json.loads((out / "kompakt.json").read_text())
    assert manifest["parity"]["vs_source_onnx"]["max_rel"] < 1e-3
    assert manifest["backend_info"]["nodes_by_provider"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_native_tensorrt_bundle(lenet_onnx, tmp_path, precision):
    out = bundle(
        lenet_onnx,
        tmp_path / "t",
        backend="tensorrt",
        precision=precision,
        calib_data="digits" if precision == "int8" else None,
    )
    manifest = json.loads((out / "kompakt.json").read_text())
    assert manifest["backend_info"]["compute_capability"]
    assert manifest["parity"]["vs_source_onnx"]["top1_agreement"] >= 0.95
    with load(out) as engine:
        assert engine.run(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("int8_speed, expected", [(2.0, "int8"), (0.5, "fp32")])
def test_precision_auto_keeps_int8_only_where_it_is_faster_and_accurate(
    lenet_onnx, tmp_path, monkeypatch, int8_speed, expected
):
    """The rule, with the timing pinned (a timed test cannot know which side it lands on) and
    the accuracy limit out of the way: an INT8 build 2x faster than FP32 at every batch is
    kept; one at half the speed is not, and the bundle is FP32."""
    from kompakt.deploy import bundle as bundle_module

    monkeypatch.setattr(
        bundle_module,
        "_speed_vs_fp32",
        lambda tmp, backend, artefact, options, x, chunk: {
            str(b): int8_speed for b in sorted({1, chunk})
        },
    )
    out = bundle(
        lenet_onnx,
        tmp_path / "auto",
        precision="auto",
        calib_data="digits",
        max_accuracy_drop=100.0,
    )
    manifest = json.loads((out / "kompakt.json").read_text())
    auto = manifest["precision_auto"]
    int8 = auto["considered"]["int8"]
    assert set(int8["speed_vs_fp32"]) == {"1", "64"}  # batch 1 and the validation batch
    assert manifest["precision"] == auto["chosen"] == expected
    assert int8["kept"] == (expected == "int8")
    with load(out, verify=True) as engine:  # whichever it kept, it is a complete bundle
        assert engine.run(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["auto"]  # no trial directories left


def test_a_slower_int8_bundle_records_and_warns_its_speed(lenet_onnx, tmp_path, monkeypatch):
    import kompakt.deploy.bundle as bundle_module

    monkeypatch.setattr(
        bundle_module, "_speed_vs_fp32", lambda *args: {"1": 0.5, "64": 1.2}
    )  # what a machine where int8 loses at batch 1 measures
    with pytest.warns(UserWarning, match=r"int8 is slower than fp32 here at batch\(es\) 1"):
        out = bundle(lenet_onnx, tmp_path / "q", precision="int8", calib_data="digits")
    manifest = json.loads((out / "kompakt.json").read_text())
    assert manifest["speed_vs_fp32"] == {"1": 0.5, "64": 1.2}
    assert manifest["warnings"] and "slower" in manifest["warnings"][0]
    auto = bundle(lenet_onnx, tmp_path / "a", precision="auto", calib_data="digits")
    assert json.loads((auto / "kompakt.json").read_text())["precision"] == "fp32"


@pytest.fixture(scope="module")
def tt_onnx(tmp_path_factory):
    """A TT-compressed model (TT convs rebuilt in-graph, TT-linear chains) on 8x8 inputs."""
    import torch

    from kompakt.export import export_onnx
    from kompakt.models import build_model

    torch.manual_seed(0)
    model = build_model("garipov-tt-conv-tt-fc", 10, 1, 8).eval()
    path = tmp_path_factory.mktemp("tt") / "tt.onnx"
    export_onnx(model, path, example_input=torch.randn(4, 1, 8, 8))
    return path


def test_tt_bundles_are_never_larger_than_their_onnx_graph(tt_onnx, tmp_path):
    source = tt_onnx.stat().st_size
    for backend, precision in CPU_BUILDS:
        if BACKENDS.get(backend)().unavailable_reason():
            continue
        out = bundle(
            tt_onnx,
            tmp_path / f"{backend}-{precision}",
            backend=backend,
            precision=precision,
            calib_data="digits",
            calib_samples=64,
        )
        manifest = json.loads((out / "kompakt.json").read_text())
        artefact = sum(manifest["files"][f]["bytes"] for f in manifest["artifact_files"])
        assert artefact <= 1.1 * source, (backend, precision, artefact, source)
        onnx_files = sorted(p.name for p in out.glob("*.onnx"))
        assert len(onnx_files) <= 2, onnx_files  # the source and what the engine loads


def test_int8_keeps_weight_rebuilds_factored_and_light_matmuls_in_float(tt_onnx, tmp_path):
    from kompakt.deploy.quantize import MIN_INT8_INNER_DIM, light_matmuls

    out = bundle(tt_onnx, tmp_path / "q", precision="int8", calib_data="digits")
    manifest = json.loads((out / "kompakt.json").read_text())
    kept = manifest["quantization"]["kept_float"]
    rebuilds = next(v for k, v in kept.items() if k.startswith("constant weight rebuild"))
    assert rebuilds  # the TT-conv kernels are rebuilt from cores in the graph
    light = light_matmuls(onnx.load(tt_onnx))
    assert light and next(v for k, v in kept.items() if k.startswith("inner")) == light
    graph = onnx.load(out / manifest["artifact"])
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul"]
    source_matmuls = [n for n in onnx.load(tt_onnx).graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == len(source_matmuls)  # nothing folded into dense weights
    weights = {i.name: list(i.dims) for i in onnx.load(tt_onnx).graph.initializer}
    for name in light:
        node = next(n for n in onnx.load(tt_onnx).graph.node if n.name == name)
        assert weights[node.input[1]][-2] < MIN_INT8_INNER_DIM
