"""A description of the machine a measurement ran on (reports always carry it)."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_machine(packages: tuple[str, ...] = ("torch", "onnx", "onnxruntime")) -> dict:
    """CPU model, cores, RAM, OS, Python and library versions; the GPU if one is there."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in packages},
        "gpu": None,
    }
    info["gpu"] = gpu_name()
    return info


FAKE_DEVICE_PREFIX = "kompakt fake"  # tests/fakes names its device so; never a measurement


def gpu_name(device: int = 0) -> str | None:
    """The CUDA GPU's name, from the CUDA runtime that the GPU backends use (cuda-python), else
    from torch: with the CPU torch that scripts/install.sh installs by default, torch alone
    would call a real GPU absent and label real TensorRT numbers a stand-in."""
    import importlib

    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cuda = importlib.import_module(module)
            error, count = cuda.cudaGetDeviceCount()
            if int(error) or count <= device:
                break
            error, props = cuda.cudaGetDeviceProperties(device)
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            name = name.rstrip("\x00")
            return None if int(error) or name.startswith(FAKE_DEVICE_PREFIX) else name
        except Exception:  # not installed, no driver: ask torch
            continue
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    except ImportError:
        pass
    return None
