"""The native TensorRT path, builder to runner, against the fake TensorRT / CUDA of tests/fakes.

Real outputs (ONNX Runtime computes them inside the fake engine); no GPU number is produced.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bundles import bundle
from kompakt.deploy import BuildOptions, DeployConfig, build_bundle
from kompakt.deploy.builders.tensorrt import TensorRTBuildSettings, build_plan
from kompakt.errors import KompaktError, ShapeError
from kompakt.runtime import load
from kompakt.runtime.backends import EngineFiles


def _reference(onnx_path, x):
    return ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0]


def _x(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 1, 8, 8)).astype(np.float32)


def test_default_deploy_records_the_profile_max_and_the_engine_refuses_more(
    fake_tensorrt, lenet_onnx, tmp_path
):
    manifest = build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    assert manifest["max_batch"] == 32  # the profile's max, never None
    assert manifest["backend_info"]["profile"]["input"] == [
        [1, 1, 8, 8],
        [8, 1, 8, 8],
        [32, 1, 8, 8],
    ]
    assert manifest["parity"]["vs_source_onnx"]["max_rel"] < 1e-5
    with load(tmp_path / "b") as engine:
        for batch in (1, 32):
            x = _x(batch)
            np.testing.assert_allclose(
                engine.run(x), _reference(lenet_onnx, x), rtol=1e-5, atol=1e-5
            )
        with pytest.raises(ShapeError, match="above this engine's max batch 32"):
            engine.run(_x(33))
        raw = np.random.default_rng(1).integers(0, 16, (40, 8, 8, 1)).astype(np.float32)
        assert len(engine.predict(raw)) == 40  # predict splits by the max batch


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_bundles_parse_build_and_agree(
    fake_tensorrt, lenet_onnx, tmp_path, precision
):
    config = DeployConfig(backend="tensorrt", precision=precision, calib_data="digits")
    manifest = build_bundle(lenet_onnx, tmp_path / "b", config, BuildOptions(max_batch=16))
    plan = manifest["backend_info"]["precision_plan"]
    assert plan["strongly_typed"] and plan["builder_flags"] == []
    parity = manifest["parity"]["vs_source_onnx"]
    assert parity["top1_agreement"] >= 0.95 and parity["max_rel"] < 0.2


def test_int8_with_int32_bias_dequantize_is_refused_by_the_parser_and_the_lint(
    fake_tensorrt, tmp_path
):
    from kompakt.export.trt_lint import lint_trt

    nodes = [
        helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias"]),
        helper.make_node("Add", ["input", "bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor("bias_q", TensorProto.INT32, [4], [1, 2, 3, 4]),
            helper.make_tensor("bias_scale", TensorProto.FLOAT, [], [0.1]),
        ],
    )
    path = tmp_path / "bias.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = lint_trt(path)
    assert not report.ok and any(
        e.op == "DequantizeLinear" and "INT32" in e.reason for e in report.errors
    )
    with pytest.raises(KompaktError, match=r"could not parse.*DequantizeLinear"):
        build_plan(path, tmp_path, TensorRTBuildSettings())


def test_static_batch_export_gets_a_fixed_profile(fake_tensorrt, lenet_onnx, tmp_path):
    model = onnx.load(lenet_onnx)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    static = tmp_path / "static.onnx"
    onnx.save(model, static)
    settings = TensorRTBuildSettings(min_batch=1, opt_batch=8, max_batch=32)
    assert settings.profile([4, 1, 8, 8]) == ((4, 1, 8, 8),) * 3
    manifest = build_bundle(static, tmp_path / "b", DeployConfig(backend="tensorrt"))
    assert manifest["max_batch"] == 4
    with load(tmp_path / "b") as engine:
        x = _x(4)
        np.testing.assert_allclose(engine.run(x), _reference(lenet_onnx, x), rtol=1e-5, atol=1e-5)


def test_the_fake_refuses_what_tensorrt_refuses(fake_tensorrt, lenet_onnx, tmp_path):
    """Fidelity of the fake itself: a profile contradicting a static dim, FP16 flags on a
    strongly typed network and a dynamic input without a profile all give None + an ERROR."""
    trt = fake_tensorrt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)

    def network(flags=0):
        net = builder.create_network(flags)
        assert trt.OnnxParser(net, logger).parse_from_file(str(lenet_onnx))
        return net

    config = builder.create_builder_config()
    assert builder.build_serialized_network(network(), config) is None  # no profile
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))  # 3 channels, not 1
    assert config.add_optimization_profile(profile) == 0
    assert builder.build_serialized_network(network(), config) is None
    bad = builder.create_optimization_profile()
    bad.set_shape("input", (8, 1, 8, 8), (1, 1, 8, 8), (4, 1, 8, 8))  # min > opt
    assert builder.create_builder_config().add_optimization_profile(bad) == -1
    typed = builder.create_builder_config()
    good = builder.create_optimization_profile()
    good.set_shape("input", (1, 1, 8, 8), (1, 1, 8, 8), (2, 1, 8, 8))
    typed.add_optimization_profile(good)
    typed.set_flag(trt.BuilderFlag.FP16)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.build_serialized_network(network(strongly), typed) is None
    assert sum(severity == trt.Logger.ERROR for severity, _ in trt.LOG) >= 3


def _two_output_model(path):
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    w = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


def test_runner_binds_every_output_with_its_dtype(fake_tensorrt, tmp_path):
    from kompakt.runtime.backends.tensorrt import TensorRTRunner

    w = _two_output_model(tmp_path / "two.onnx")
    info = build_plan(tmp_path / "two.onnx", tmp_path, TensorRTBuildSettings(max_batch=8))
    files = EngineFiles(
        tmp_path, "model.plan", {"model.plan": (tmp_path / "model.plan").read_bytes()}
    )
    runner = TensorRTRunner(files, {"backend_info": info}, None)
    x = _x(5)
    out = runner.run_all(x)
    assert out["label"].dtype == np.int64 and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], x.reshape(5, -1) @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["label"], (x.reshape(5, -1) @ w).argmax(1))
    with pytest.raises(ShapeError, match="outside the plan's optimisation profile"):
        runner.run(_x(9))
    runner.close()


def test_a_plan_from_another_tensorrt_or_gpu_is_refused(
    fake_tensorrt, lenet_onnx, tmp_path, monkeypatch
):
    build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.9.0.1")
    with pytest.raises(KompaktError, match=r"built for tensorrt '10.8.0.43'.*rebuild it here"):
        load(tmp_path / "b")


def test_timing_cache_is_reused_on_rebuild_and_from_a_path(fake_tensorrt, lenet_onnx, tmp_path):
    first = build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    assert first["backend_info"]["timing_cache_reused"] is False
    again = build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt", force=True))
    assert again["backend_info"]["timing_cache_reused"] is True
    other = build_bundle(
        lenet_onnx,
        tmp_path / "c",
        DeployConfig(backend="tensorrt"),
        BuildOptions(timing_cache=str(tmp_path / "b" / "timing.cache")),
    )
    assert other["backend_info"]["timing_cache_reused"] is True
    (tmp_path / "junk.cache").write_bytes(b"not a cache")
    with pytest.warns(UserWarning, match="could not read the timing cache"):
        build_bundle(
            lenet_onnx,
            tmp_path / "d",
            DeployConfig(backend="tensorrt"),
            BuildOptions(timing_cache=str(tmp_path / "junk.cache")),
        )


def test_eight_threads_get_their_own_contexts_and_memory_stays_flat(
    fake_tensorrt, lenet_onnx, tmp_path
):
    from fakes import cuda_runtime

    build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    x = _x(8)
    with load(tmp_path / "b") as engine:
        want = engine.run(x)
        results, errors = [], []

        def work():
            try:
                for _ in range(20):
                    results.append(engine.run(x))
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 160
        assert all(np.array_equal(r, want) for r in results)
        runner = engine._runner
        # the main thread's and one per worker, made once; a worker that ended is freed when
        # a later thread makes its own
        assert 1 <= len(runner.slots) <= 9
        used = cuda_runtime.STATE.used
        for _ in range(20):
            engine.run(x)
        assert cuda_runtime.STATE.used == used  # no allocation per call
    assert cuda_runtime.STATE.used == 0  # close() freed every buffer


def test_device_id_is_honoured_and_a_missing_device_is_one_clear_error(
    fake_tensorrt, lenet_onnx, tmp_path
):
    from fakes import cuda_runtime

    cuda_runtime.reset(devices=2)
    manifest = build_bundle(
        lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"), BuildOptions(device_id=1)
    )
    assert manifest["backend_options"]["device_id"] == 1 and cuda_runtime.STATE.current == 1
    with pytest.raises(KompaktError, match="cudaSetDevice failed"):
        build_bundle(
            lenet_onnx, tmp_path / "c", DeployConfig(backend="tensorrt"), BuildOptions(device_id=5)
        )


def test_a_failing_execute_is_one_line_naming_the_call(
    fake_tensorrt, lenet_onnx, tmp_path, monkeypatch
):
    build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    monkeypatch.setattr(fake_tensorrt.IExecutionContext, "execute_async_v3", lambda self, s: False)
    with (
        load(tmp_path / "b") as engine,
        pytest.raises(KompaktError, match="execute_async_v3 failed"),
    ):
        engine.run(_x(1))
    manifest = json.loads((tmp_path / "b" / "kompakt.json").read_text())
    assert manifest["backend_info"]["gpu"] == "kompakt fake GPU"


def test_bench_gpu_fields_device_memory_and_synchronised_timing(
    fake_tensorrt, lenet_onnx, tmp_path
):
    """The worker's GPU measurement lines, in-process (a bench worker is a fresh process
    without the fake); the report labels the figures as not measured on a GPU."""
    from kompakt.runtime_bench.bench import gpu_summary, merge_gpu
    from kompakt.runtime_bench.report import gpu_lines
    from kompakt.runtime_bench.worker import measure

    build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"))
    result = measure(str(tmp_path / "b"), [1, 8], 0.0, 3, 0.0, None)
    gpu = result["gpu"]
    assert gpu["device"] == "kompakt fake GPU" and gpu["sdk_version"] == "10.8.0.43"
    assert gpu["context_device_memory_bytes"] > 0 and gpu["io_buffers_bytes"] > 0
    assert gpu["device_used_delta_bytes"] >= gpu["io_buffers_bytes"]
    assert sorted(gpu["timing"]["device_only_s"]) == ["1", "8"]
    assert gpu["timing"]["end_to_end_includes_host_device_copies"] is True
    summary = gpu_summary(merge_gpu(None, gpu))
    assert summary["measured_on_gpu"] is False  # no nvidia-smi GPU here
    assert summary["timing"]["device_only"]["8"]["runs"] == 3
    text = "\n".join(gpu_lines([{"name": "trt", "gpu": summary}]))
    assert "GPU: not measured (stand-in)" in text and "kompakt fake GPU" not in text


def test_threads_run_on_the_engines_device_and_ended_threads_give_memory_back(
    fake_tensorrt, lenet_onnx, tmp_path
):
    """Issue 27, 1-2 (the fake now keeps a current device per host thread, and a context takes
    device_memory_size_v2 bytes): a fresh thread runs an engine on device 1 (it started on
    device 0), and contexts of ended threads are freed instead of piling up."""
    from fakes import cuda_runtime

    cuda_runtime.reset(devices=2)
    build_bundle(
        lenet_onnx, tmp_path / "b", DeployConfig(backend="tensorrt"), BuildOptions(device_id=1)
    )
    x = _x(4)
    with load(tmp_path / "b") as engine:
        want = engine.run(x)
        per_context = engine.runner.device_memory()["context_device_memory_bytes"]
        assert per_context > 0
        errors = []

        def once():
            try:
                assert np.array_equal(engine.run(x), want)
            except Exception as error:  # surfaced below
                errors.append(f"{type(error).__name__}: {error}")

        for _ in range(2):  # 8 fresh threads, twice
            threads = [threading.Thread(target=once) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors[:2]
        assert cuda_runtime.STATE.used_on(0) == 0  # nothing landed on device 0
        last = threading.Thread(target=once)
        last.start()
        last.join()
        memory = engine.runner.device_memory()
        assert memory["contexts"] <= 2  # the main thread's and the last one's, not 18
        assert cuda_runtime.STATE.used_on(1) < 4 * per_context
    assert cuda_runtime.STATE.used == 0


def test_ort_gpu_deploys_need_the_placement_api_and_pass_only_real_ep_options(
    fake_ort_gpu, lenet_onnx, tmp_path
):
    """Issue 27, 3: onnxruntime-gpu 1.23 lacks get_provider_graph_assignment_info (the fake
    plays it); kompakt names the version it needs. Every EP option kompakt allows is a key
    ONNX Runtime parses (the fake refuses others, as the real session does)."""
    from fakes.onnxruntime_gpu import EP_OPTION_KEYS
    from kompakt.runtime.backends.onnxruntime import CUDA_EP_OPTIONS, TRT_EP_OPTIONS

    assert not TRT_EP_OPTIONS - EP_OPTION_KEYS["TensorrtExecutionProvider"]
    assert not CUDA_EP_OPTIONS - EP_OPTION_KEYS["CUDAExecutionProvider"]
    bundle(lenet_onnx, tmp_path / "ok", backend="onnxruntime-tensorrt")
    fake_ort_gpu.version = "1.23.2"
    with pytest.raises(KompaktError, match=r"onnxruntime-gpu >= 1\.24"):
        bundle(lenet_onnx, tmp_path / "old", backend="onnxruntime-tensorrt")
    with pytest.raises(RuntimeError, match="Invalid TensorRT EP option"):
        fake_ort_gpu(str(lenet_onnx), providers=[("TensorrtExecutionProvider", {"trt_no_such": 1})])


def test_the_gpu_label_comes_from_the_cuda_runtime_not_torch(fake_tensorrt, monkeypatch):
    """Issue 27, 4: with the CPU torch, a real GPU must still be named (from cuda-python);
    the test fake's device never is."""
    from fakes import cuda_runtime
    from kompakt.machine import describe_machine, gpu_name

    assert gpu_name() is None and describe_machine(())["gpu"] is None  # the fake: not a GPU
    monkeypatch.setattr(
        cuda_runtime.STATE.devices[0], "name", b"NVIDIA H100 80GB HBM3".ljust(256, b"\x00")
    )
    assert gpu_name() == "NVIDIA H100 80GB HBM3"
    assert describe_machine(())["gpu"] == "NVIDIA H100 80GB HBM3"


def test_gpu_int8_keeps_full_8_bit_weights(fake_tensorrt, lenet_onnx, tmp_path):
    """Issue 27, 6: the portable 7-bit scheme is a fix for x86 CPUs; a TensorRT graph gets the
    full range whatever --int8-scheme says (its kernels accumulate in int32)."""
    manifest = build_bundle(
        lenet_onnx,
        tmp_path / "b",
        DeployConfig(backend="tensorrt", precision="int8", calib_data="digits", calib_samples=32),
    )
    quantization = manifest["quantization"]
    assert quantization["scheme"] == "full-range" and quantization["cpu_kernels"] is False
    assert quantization["max_abs_weight"] > 64
