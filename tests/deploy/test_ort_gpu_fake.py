"""The ONNX Runtime CUDA / TensorRT provider paths against a session stand-in (no GPU here):
the runtime's provider list, placement and fallback refusals, what precision really runs."""

from __future__ import annotations

import numpy as np
import pytest

from kompakt.deploy import DeployConfig, build_bundle, list_backends
from kompakt.errors import ConfigError
from kompakt.runtime import load


def test_tensorrt_ep_build_checks_placement_with_the_runtime_provider_list(
    fake_ort_gpu, lenet_onnx, tmp_path
):
    manifest = build_bundle(
        lenet_onnx, tmp_path / "b", DeployConfig(backend="onnxruntime-tensorrt")
    )
    first = [p[0] if isinstance(p, tuple) else p for p in fake_ort_gpu.created[0]]
    assert first == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    placed = manifest["backend_info"]["nodes_by_provider"]
    assert placed["TensorrtExecutionProvider"] > 0 and manifest["max_batch"] == 32
    assert manifest["backend_info"]["onnxruntime"]
    with load(tmp_path / "b") as engine:
        assert engine.run(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_compute_nodes_on_the_cpu_are_refused(fake_ort_gpu, lenet_onnx, tmp_path):
    fake_ort_gpu.on_cpu = frozenset({"Conv"})
    with pytest.raises(ConfigError, match=r"compute nodes would run on the CPU.*Conv"):
        build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="onnxruntime-tensorrt"))
    assert not (tmp_path / "b").exists()


def test_a_provider_that_falls_back_is_refused(fake_ort_gpu, lenet_onnx, tmp_path):
    fake_ort_gpu.active = ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="did not activate"):
        build_bundle(lenet_onnx, tmp_path / "b", DeployConfig(backend="onnxruntime-cuda"))


def test_cuda_ep_fp16_runs_an_fp16_graph_and_int8_is_refused_with_the_reason(
    fake_ort_gpu, lenet_onnx, tmp_path
):
    manifest = build_bundle(
        lenet_onnx, tmp_path / "b", DeployConfig(backend="onnxruntime-cuda", precision="fp16")
    )
    assert manifest["graph_precision"] == "fp16" and manifest["artifact"] == "model.fp16.onnx"
    with pytest.raises(ConfigError, match="runs Q/DQ graphs in float"):
        build_bundle(
            lenet_onnx,
            tmp_path / "c",
            DeployConfig(backend="onnxruntime-cuda", precision="int8", calib_data="digits"),
        )


def test_both_onnxruntime_wheels_installed_is_named_with_the_fix(fake_ort_gpu, monkeypatch):
    from kompakt.deploy.builders import onnxruntime as builder

    monkeypatch.setattr(builder, "installed_ort_wheels", lambda: ["onnxruntime", "onnxruntime-gpu"])
    rows = {r["name"]: r for r in list_backends()}
    reason = rows["onnxruntime-cuda"]["reason"]
    assert not rows["onnxruntime-cuda"]["available"] and "installed together" in reason
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in reason
