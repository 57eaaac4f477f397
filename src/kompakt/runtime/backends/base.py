"""The runtime backend registry and the one way to import an optional SDK."""

from __future__ import annotations

import importlib
from types import ModuleType

from kompakt.errors import BackendUnavailable
from kompakt.registry import Registry

RUNNERS: Registry = Registry("runtime backend")


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional SDK, or raise the one BackendUnavailable error with the install fix.

    Args:
        module: the import name ("onnxruntime", "openvino", "tensorrt", "cuda.bindings...").
        extra: the kompakt extra that installs it ("openvino", "gpu").
        purpose: what needs it, for the message (default: the module).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BackendUnavailable(
            f"{purpose or module} needs the {module.split('.')[0]!r} package, which is not "
            f"importable here ({error}): pip install 'kompakt[{extra}]'"
        ) from None
