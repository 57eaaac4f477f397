"""A fake of cuda-python's runtime bindings (`cuda.bindings.runtime`, formerly `cuda.cudart`).

Follows https://nvidia.github.io/cuda-python/cuda-bindings/latest/module/runtime.html: every
call returns a tuple whose first item is a `cudaError_t` (`cudaSuccess` = 0) followed by the
results; streams and events are opaque objects that `int()` converts to a handle.

"Device memory" is host memory owned by this module, addressed by the integer pointers that
cudaMalloc returns, so a fake TensorRT engine reads and writes it like a GPU would. Misuse that
a real driver rejects is rejected here too: freeing twice, copying out of an allocation's bounds
or from host memory declared as device memory gives `cudaErrorInvalidValue`. The fake device is
called "kompakt fake GPU" so nothing can mistake it for a measurement.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import threading
import time

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class _Handle:
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.handle = next(self._ids)
        self.recorded_at: float | None = None

    def __int__(self) -> int:
        return self.handle


class cudaStream_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


class cudaDeviceProp:
    def __init__(self, name: str, major: int, minor: int, total: int) -> None:
        self.name = name.encode().ljust(256, b"\x00")
        self.major, self.minor, self.totalGlobalMem = major, minor, total


class _State:
    """The fake machine: its devices, live allocations, streams and a peak-memory counter."""

    def __init__(self, devices: int = 1, total_bytes: int = 16 * 2**30) -> None:
        self.devices = [
            cudaDeviceProp("kompakt fake GPU", 8, 9, total_bytes) for _ in range(devices)
        ]
        self.thread = threading.local()  # the current device is per host thread, as in CUDA
        self.allocations: dict[int, np.ndarray] = {}
        self.owner: dict[int, int] = {}  # allocation or stream handle -> its device
        self.streams: set[int] = set()
        self.used = self.peak = 0
        self.lock = threading.Lock()

    @property
    def current(self) -> int:
        """This thread's current device: 0 until the thread calls cudaSetDevice."""
        return getattr(self.thread, "device", 0)

    @current.setter
    def current(self, device: int) -> None:
        self.thread.device = device

    def device_of(self, pointer: int) -> int | None:
        for start, buffer in self.allocations.items():
            if start <= pointer < start + buffer.nbytes:
                return self.owner.get(start)
        return None

    def used_on(self, device: int) -> int:
        return sum(b.nbytes for k, b in self.allocations.items() if self.owner.get(k) == device)

    def region(self, pointer: int, count: int) -> bool:
        """True when [pointer, pointer + count) lies inside one live allocation."""
        for start, buffer in self.allocations.items():
            if start <= pointer and pointer + count <= start + buffer.nbytes:
                return True
        return False


STATE = _State()
OK = cudaError_t.cudaSuccess
INVALID = cudaError_t.cudaErrorInvalidValue


def reset(devices: int = 1) -> None:
    """A fresh fake machine (tests call it between cases)."""
    global STATE
    STATE = _State(devices)


def cudaGetDeviceCount():
    return (OK, len(STATE.devices)) if STATE.devices else (cudaError_t.cudaErrorNoDevice, 0)


def cudaGetDeviceProperties(device: int):
    if not 0 <= device < len(STATE.devices):
        return (cudaError_t.cudaErrorInvalidDevice, None)
    return (OK, STATE.devices[device])


def cudaSetDevice(device: int):
    if not 0 <= device < len(STATE.devices):
        return (cudaError_t.cudaErrorInvalidDevice,)
    STATE.current = device
    return (OK,)


def cudaGetDevice():
    return (OK, STATE.current)


def cudaDriverGetVersion():
    return (OK, 12080)


def cudaRuntimeGetVersion():
    return (OK, 12080)


def cudaMalloc(size: int):
    if size < 0:
        return (INVALID, 0)
    buffer = np.zeros(max(int(size), 1), np.uint8)
    device = STATE.current
    with STATE.lock:
        if STATE.used_on(device) + buffer.nbytes > STATE.devices[device].totalGlobalMem:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        STATE.allocations[buffer.ctypes.data] = buffer
        STATE.owner[buffer.ctypes.data] = device
        STATE.used += buffer.nbytes
        STATE.peak = max(STATE.peak, STATE.used)
    return (OK, buffer.ctypes.data)


def cudaFree(pointer: int):
    with STATE.lock:
        buffer = STATE.allocations.pop(int(pointer), None)
        if buffer is None:
            return (INVALID,)
        STATE.owner.pop(int(pointer), None)
        STATE.used -= buffer.nbytes
    return (OK,)


def cudaMemGetInfo():
    """Free and total memory of this thread's current device (the whole device)."""
    total = STATE.devices[STATE.current].totalGlobalMem
    return (OK, total - STATE.used_on(STATE.current), total)


def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream):
    if stream is not None and int(stream) not in STATE.streams and int(stream) != 0:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    return cudaMemcpy(dst, src, count, kind)


def cudaMemcpy(dst: int, src: int, count: int, kind: cudaMemcpyKind):
    dst, src = int(dst), int(src)
    to_device = kind in (
        cudaMemcpyKind.cudaMemcpyHostToDevice,
        cudaMemcpyKind.cudaMemcpyDeviceToDevice,
    )
    from_device = kind in (
        cudaMemcpyKind.cudaMemcpyDeviceToHost,
        cudaMemcpyKind.cudaMemcpyDeviceToDevice,
    )
    if (to_device and not STATE.region(dst, count)) or (
        from_device and not STATE.region(src, count)
    ):
        return (INVALID,)
    ctypes.memmove(dst, src, count)
    return (OK,)


def cudaStreamCreate():
    stream = cudaStream_t()
    STATE.streams.add(int(stream))
    STATE.owner[-int(stream)] = STATE.current  # streams belong to the device current at creation
    return (OK, stream)


def stream_device(stream) -> int | None:
    return STATE.owner.get(-int(stream))


def cudaStreamSynchronize(stream):
    known = stream is None or int(stream) in STATE.streams or int(stream) == 0
    return (OK,) if known else (cudaError_t.cudaErrorInvalidResourceHandle,)


def cudaStreamDestroy(stream):
    if int(stream) not in STATE.streams:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    STATE.streams.discard(int(stream))
    STATE.owner.pop(-int(stream), None)
    return (OK,)


def cudaEventCreate():
    return (OK, cudaEvent_t())


def cudaEventRecord(event, stream):
    event.recorded_at = time.perf_counter()  # the fake's work is synchronous
    return (OK,)


def cudaEventSynchronize(event):
    return (OK,) if event.recorded_at is not None else (INVALID,)


def cudaEventElapsedTime(start, end):
    if start.recorded_at is None or end.recorded_at is None:
        return (INVALID, 0.0)
    return (OK, (end.recorded_at - start.recorded_at) * 1e3)


def cudaEventDestroy(event):
    return (OK,)


def device_bytes(pointer: int, count: int) -> np.ndarray | None:
    """The fake device memory at [pointer, pointer + count) as a writable uint8 view."""
    pointer = int(pointer)
    for start, buffer in STATE.allocations.items():
        if start <= pointer and pointer + count <= start + buffer.nbytes:
            return buffer[pointer - start : pointer - start + count]
    return None
