"""Native TensorRT runner: a deserialised plan run with execute_async_v3 on CUDA buffers from
cuda-python (no torch). A plan only runs on the GPU and TensorRT version it was built for, so
the runner compares the build's fingerprint with this machine's before deserialising."""

from __future__ import annotations

import threading

import numpy as np

from kompakt.errors import KompaktError, ShapeError
from kompakt.runtime.backends.base import RUNNERS, EngineFiles, require


def cudart():
    """cuda-python's runtime bindings (new and old module paths)."""
    try:
        return require("cuda.bindings.runtime", "gpu", "the tensorrt backend")
    except KompaktError:
        return require("cuda.cudart", "gpu", "the tensorrt backend")


def cuda_call(result: tuple, call: str = "CUDA call") -> object:
    """Unwrap a cuda-python (error, value...) tuple, raising one line naming the call."""
    error, *values = result
    if int(error) != 0:
        raise KompaktError(f"{call} failed: {error}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_fingerprint(device: int = 0) -> dict:
    """TensorRT version, GPU name and compute capability: a plan only runs where it was built."""
    trt = require("tensorrt", "gpu", "the tensorrt backend")
    props = cuda_call(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
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


class _Slot:
    """One thread's execution context, CUDA stream and device buffers (grown, never per call),
    and the thread that owns them: when it has ended, the next new thread frees them."""

    def __init__(self, context, stream) -> None:
        self.context, self.stream = context, stream
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.owner = threading.current_thread()


@RUNNERS.register("tensorrt", help="a native TensorRT engine (plan) on a CUDA GPU")
class TensorRTRunner:
    """A deserialised plan. Each thread gets its own execution context, stream and device
    buffers (contexts are not thread-safe), made once and reused, so no allocation happens
    inside a timed call. Every I/O tensor is bound with its own dtype; every TensorRT and CUDA
    call's result is checked."""

    sdk = "tensorrt"

    def __init__(self, files: EngineFiles, manifest: dict, threads: int | None) -> None:
        trt = require("tensorrt", "gpu", "the tensorrt backend")
        self.trt, self.cuda = trt, cudart()
        self.device = int(manifest.get("backend_options", {}).get("device_id", 0))
        cuda_call(self.cuda.cudaSetDevice(self.device), "cudaSetDevice")
        check_fingerprint(manifest.get("backend_info", {}), device_fingerprint(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(files.data)
        if self.engine is None:
            raise KompaktError(f"TensorRT could not deserialise {files.main} (see its log above)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or not self.outputs:
            raise KompaktError(
                "kompakt runs plans with one input and at least one output; "
                f"{files.main} has inputs {self.inputs} and outputs {self.outputs}"
            )
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.local = threading.local()
        self.slots: list[_Slot] = []
        self.lock = threading.Lock()

    def _slot(self) -> _Slot:
        """This thread's slot, made on its first call (on the device `run_all` made current)."""
        slot = getattr(self.local, "slot", None)
        if slot is None:
            self._release_ended_threads()
            context = self.engine.create_execution_context()
            if context is None:
                raise KompaktError("TensorRT create_execution_context failed (device memory?)")
            stream = cuda_call(self.cuda.cudaStreamCreate(), "cudaStreamCreate")
            slot = self.local.slot = _Slot(context, stream)
            with self.lock:
                self.slots.append(slot)
        return slot

    def _release_ended_threads(self) -> None:
        """Free the context (its activation memory), stream and buffers of threads that have
        ended: an app serving from short-lived threads would otherwise grow one context per
        thread it ever had."""
        with self.lock:
            ended = [slot for slot in self.slots if not slot.owner.is_alive()]
            self.slots = [slot for slot in self.slots if slot.owner.is_alive()]
        for slot in ended:
            self._free(slot)

    def _free(self, slot: _Slot) -> None:
        for pointer, _ in slot.buffers.values():
            self.cuda.cudaFree(pointer)
        slot.buffers.clear()
        self.cuda.cudaStreamDestroy(slot.stream)
        slot.context = None  # TensorRT frees a context's device memory with the object

    def _buffer(self, slot: _Slot, name: str, nbytes: int) -> int:
        pointer, size = slot.buffers.get(name, (0, 0))
        if size < nbytes:  # first call, or a larger batch than before: grow once
            if pointer:
                cuda_call(self.cuda.cudaFree(pointer), "cudaFree")
            pointer = int(cuda_call(self.cuda.cudaMalloc(nbytes), "cudaMalloc"))
            slot.buffers[name] = (pointer, nbytes)
        if not slot.context.set_tensor_address(name, pointer):
            raise KompaktError(f"TensorRT set_tensor_address({name!r}) failed")
        return pointer

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[self.outputs[0]]

    def run_all(self, x: np.ndarray, copies: bool = True) -> dict[str, np.ndarray]:
        """Every output for input x. copies=False skips the host<->device copies (timing of the
        engine alone; the outputs are then left on the device and returned empty)."""
        cuda = self.cuda
        # the CUDA runtime's current device is per host thread (and the app may change it):
        # without this, a thread that never called cudaSetDevice would make its context and
        # buffers on device 0 and run an engine that lives elsewhere
        cuda_call(cuda.cudaSetDevice(self.device), "cudaSetDevice")
        slot = self._slot()
        context, stream = slot.context, slot.stream
        name = self.inputs[0]
        x = np.ascontiguousarray(x, dtype=self.dtypes[name])
        if not context.set_input_shape(name, tuple(x.shape)):
            raise ShapeError(
                f"TensorRT rejected input shape {x.shape}: outside the plan's optimisation "
                "profile (see the bundle's max_batch)"
            )
        results = {}
        for output in self.outputs:
            shape = tuple(context.get_tensor_shape(output))
            if any(d < 0 for d in shape):
                raise KompaktError(
                    f"TensorRT could not infer the shape of {output!r} for {x.shape}"
                )
            results[output] = np.empty(shape, self.dtypes[output])
        source = self._buffer(slot, name, x.nbytes)
        targets = {o: self._buffer(slot, o, max(a.nbytes, 1)) for o, a in results.items()}
        h2d = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if copies:
            cuda_call(
                cuda.cudaMemcpyAsync(source, x.ctypes.data, x.nbytes, h2d, stream),
                "cudaMemcpyAsync (to the GPU)",
            )
        if not context.execute_async_v3(int(stream)):
            raise KompaktError("TensorRT execute_async_v3 failed (see its log above)")
        if copies:
            for output, array in results.items():
                cuda_call(
                    cuda.cudaMemcpyAsync(
                        array.ctypes.data, targets[output], array.nbytes, d2h, stream
                    ),
                    "cudaMemcpyAsync (from the GPU)",
                )
        cuda_call(cuda.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return results

    def device_memory(self) -> dict:
        """Activation memory per execution context (each thread that ran has one), the live
        contexts, and the I/O buffers this runner holds (bytes)."""
        with self.lock:
            live = [slot for slot in self.slots if slot.context is not None]
        held = sum(nbytes for slot in live for _, nbytes in slot.buffers.values())
        per_context = int(self.engine.device_memory_size_v2)  # TensorRT 10.1+ (pinned range)
        return {
            "context_device_memory_bytes": per_context,
            "contexts": len(live),
            "io_buffers_bytes": held,
        }

    def close(self) -> None:
        with self.lock:
            slots, self.slots = self.slots, []
        for slot in slots:
            self._free(slot)
        self.engine = None
