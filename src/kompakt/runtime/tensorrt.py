"""Running a TensorRT plan: execute_async_v3 with torch CUDA tensors as buffers (lazy imports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kompakt.errors import KompaktError


def check_fingerprint(built: dict, here: dict) -> None:
    """Refuse a plan built for another TensorRT version, GPU or compute capability."""
    for key in ("tensorrt", "gpu", "compute_capability"):
        if built.get(key) != here.get(key):
            raise KompaktError(
                f"this TensorRT plan was built for {key} {built.get(key)!r} but this machine has "
                f"{here.get(key)!r}; rebuild it here: kompakt deploy model.onnx --backend "
                "tensorrt --force (plans are specific to GPU and TensorRT version)"
            )


class TensorRTEngineRunner:
    def __init__(self, path: Path, manifest: dict) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError:
            raise KompaktError(
                "the tensorrt backend needs tensorrt and torch with CUDA: pip install "
                "'kompakt[gpu]' on a GPU machine"
            ) from None
        from kompakt.deploy.tensorrt_backend import device_fingerprint

        check_fingerprint(manifest.get("backend_info", {}), device_fingerprint())
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]  # fmt: skip
        self.outputs = [n for n in self.names if n not in self.inputs]

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        context = self.engine.create_execution_context()  # one per call: thread-safe
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            tensor = torch.from_numpy(x).cuda(non_blocking=True)
            context.set_input_shape(self.inputs[0], tuple(tensor.shape))
            context.set_tensor_address(self.inputs[0], tensor.data_ptr())
            out_shape = tuple(context.get_tensor_shape(self.outputs[0]))
            output = torch.empty(out_shape, dtype=torch.float32, device="cuda")
            context.set_tensor_address(self.outputs[0], output.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise KompaktError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return output.cpu().numpy()

    def close(self) -> None:
        self.engine = None
