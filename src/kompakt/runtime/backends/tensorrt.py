"""Native TensorRT runner: a deserialised plan run with execute_async_v3 on CUDA buffers from
cuda-python (no torch). A plan only runs on the GPU and TensorRT version it was built for, so
the runner compares the build's fingerprint with this machine's before deserialising."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from kompakt.errors import KompaktError, ShapeError
from kompakt.runtime.backends.base import RUNNERS, require


def cudart():
    """cuda-python's runtime bindings (new and old module paths)."""
    try:
        return require("cuda.bindings.runtime", "gpu", "the tensorrt backend")
    except KompaktError:
        return require("cuda.cudart", "gpu", "the tensorrt backend")


def cuda_call(result: tuple) -> object:
    """Unwrap a cuda-python (error, value...) tuple, raising on an error code."""
    error, *values = result
    if int(error) != 0:
        raise KompaktError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def device_fingerprint(device: int = 0) -> dict:
    """TensorRT version, GPU name and compute capability: a plan only runs where it was built."""
    trt = require("tensorrt", "gpu", "the tensorrt backend")
    props = cuda_call(cudart().cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {
        "tensorrt": trt.__version__,
        "gpu": name.rstrip("\x00"),
        "compute_capability": f"{props.major}.{props.minor}",
    }


def check_fingerprint(built: dict, here: dict) -> None:
    """Refuse a plan built for another TensorRT version, GPU or compute capability."""
    for key in ("tensorrt", "gpu", "compute_capability"):
        if built.get(key) != here.get(key):
            raise KompaktError(
                f"this TensorRT plan was built for {key} {built.get(key)!r} but this machine has "
                f"{here.get(key)!r}; rebuild it here: kompakt deploy model.onnx --backend "
                "tensorrt --force (plans are specific to GPU and TensorRT version)"
            )


@RUNNERS.register("tensorrt", help="a native TensorRT engine (plan) on a CUDA GPU")
class TensorRTRunner:
    """Deserialises the plan; one execution context per thread (contexts are not thread-safe)."""

    sdk = "tensorrt"

    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        trt = require("tensorrt", "gpu", "the tensorrt backend")
        self.cuda = cudart()
        check_fingerprint(manifest.get("backend_info", {}), device_fingerprint())
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise KompaktError(f"TensorRT could not deserialise {path} (see its log above)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.local = threading.local()

    def _context(self):
        context = getattr(self.local, "context", None)
        if context is None:
            context = self.local.context = self.engine.create_execution_context()
            self.local.stream = cuda_call(self.cuda.cudaStreamCreate())
        return context, self.local.stream

    def run(self, x: np.ndarray) -> np.ndarray:
        cuda = self.cuda
        context, stream = self._context()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not context.set_input_shape(self.inputs[0], tuple(x.shape)):
            raise ShapeError(
                f"TensorRT rejected input shape {x.shape}: outside the plan's optimisation "
                "profile (see the bundle's max_batch)"
            )
        out_shape = tuple(context.get_tensor_shape(self.outputs[0]))
        if any(d < 0 for d in out_shape):
            raise KompaktError(f"TensorRT could not infer the output shape for input {x.shape}")
        output = np.empty(out_shape, np.float32)
        src = cuda_call(cuda.cudaMalloc(x.nbytes))
        dst = cuda_call(cuda.cudaMalloc(output.nbytes))
        try:
            h2d = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
            d2h = cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
            cuda_call(cuda.cudaMemcpyAsync(src, x.ctypes.data, x.nbytes, h2d, stream))
            context.set_tensor_address(self.inputs[0], int(src))
            context.set_tensor_address(self.outputs[0], int(dst))
            if not context.execute_async_v3(int(stream)):
                raise KompaktError("TensorRT execute_async_v3 failed (see its log above)")
            cuda_call(cuda.cudaMemcpyAsync(output.ctypes.data, dst, output.nbytes, d2h, stream))
            cuda_call(cuda.cudaStreamSynchronize(stream))
        finally:
            cuda.cudaFree(src)
            cuda.cudaFree(dst)
        return output

    def close(self) -> None:
        self.engine = None
