"""Runtime backends, one module each (Polygraphy-style): the runner, its SDK import and the
device facts it checks. numpy and the backend's SDK only; never torch, never kompakt.deploy.

Every module in this package registers its runners in RUNNERS on import (`load_builtin_runners`
imports them all); a plugin outside kompakt registers its own the same way. A runner is a class
`Runner(path, manifest, threads)` with `run(x) -> np.ndarray` (thread-safe) and `close()`, and a
class attribute `sdk` naming the module it imports (the benchmark pre-imports it so that its
import is not counted as model memory).
"""

from __future__ import annotations

import importlib
import pkgutil
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


def load_builtin_runners() -> None:
    """Import every runner module of this package (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def plugin_modules() -> list[str]:
    """Modules outside kompakt that registered runners (a fresh process must import them)."""
    modules = {RUNNERS.get(name).__module__ for name in RUNNERS.names()}
    return sorted(m for m in modules if not m.startswith("kompakt."))


load_builtin_runners()

__all__ = ["RUNNERS", "BackendUnavailable", "plugin_modules", "require"]
