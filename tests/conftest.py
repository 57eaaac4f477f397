"""Test setup: GPU/TensorRT tests skip with a reason, or fail under KOMPAKT_REQUIRE_GPU=1."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# the export cost model is calibrated once per test session, into a throwaway cache (tests
# never write to the user's ~/.cache; subprocesses inherit it)
if "KOMPAKT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["KOMPAKT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kompakt-test-cache-")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA install counts as no CUDA
        return False


def missing_accelerator(keywords: object) -> str | None:
    """Why a test with these markers cannot run here, or None when it can."""
    if "tensorrt" in keywords and (
        importlib.util.find_spec("tensorrt") is None or not _cuda_available()
    ):
        return "needs the tensorrt package and a CUDA GPU (pip install 'kompakt[gpu]')"
    if "gpu" in keywords and not _cuda_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = missing_accelerator(item.keywords)
    if reason is None:
        return
    if os.environ.get("KOMPAKT_REQUIRE_GPU") == "1":
        pytest.fail(f"KOMPAKT_REQUIRE_GPU=1 but this test {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lenet_onnx(tmp_path_factory):
    """lenet5 trained 2 epochs on digits and exported (shared by the deploy/runtime tests)."""
    from bundles import trained_onnx

    return trained_onnx(tmp_path_factory.mktemp("lenet"))


@pytest.fixture(scope="session")
def lenet_bundle(lenet_onnx, tmp_path_factory):
    """An onnxruntime fp32 bundle of `lenet_onnx` (max batch 64)."""
    from bundles import bundle

    return bundle(lenet_onnx, tmp_path_factory.mktemp("bundles") / "lenet-ort")


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """The fake `tensorrt` and cuda-python modules (tests/fakes) in sys.modules for one test:
    every TensorRT builder and runner line runs on the CPU, results computed by ONNX Runtime."""
    import types

    from fakes import cuda_runtime, tensorrt

    cuda_runtime.reset()
    tensorrt.LOG.clear()
    package = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda_runtime
    package.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda_runtime)
    return tensorrt


@pytest.fixture
def fake_ort_gpu(monkeypatch):
    """onnxruntime with the CUDA and TensorRT providers 'available' and a session stand-in
    (tests/fakes/onnxruntime_gpu.py) that reports fallback and node placement like ORT does."""
    import onnxruntime as ort

    from fakes import onnxruntime_gpu
    from kompakt.deploy.builders import onnxruntime as builder

    session = onnxruntime_gpu.FakeGpuSession
    session.active, session.created = None, []
    session.on_cpu = frozenset({"Shape", "Gather", "Unsqueeze", "Concat"})
    session.version = "1.24.1"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(builder, "installed_ort_wheels", lambda: ["onnxruntime-gpu"])
    return session
