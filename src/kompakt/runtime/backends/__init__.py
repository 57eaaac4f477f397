"""Runtime backends, one module each (Polygraphy-style): the runner, its SDK import and the
device facts it checks. numpy and the backend's SDK only; never torch, never kompakt.deploy.

Every module in this package registers its runners in RUNNERS on import (`load_builtin_runners`
imports them all); a plugin outside kompakt registers its own the same way. A runner is a class
`Runner(files: EngineFiles, manifest, threads)` that loads the model from `files` (the checked
bytes, never the path again), with `run(x) -> np.ndarray` (thread-safe) and `close()`, and a
class attribute `sdk` naming the module it imports (the benchmark pre-imports it so that its
import is not counted as model memory).
"""

from __future__ import annotations

import importlib
import pkgutil

from kompakt.errors import BackendUnavailable
from kompakt.runtime.backends.base import RUNNERS, EngineFiles, require


def load_builtin_runners() -> None:
    """Import every runner module of this package (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def plugin_modules() -> list[str]:
    """Modules outside kompakt that registered runners (a fresh process must import them)."""
    modules = {RUNNERS.get(name).__module__ for name in RUNNERS.names()}
    return sorted(m for m in modules if not m.startswith("kompakt."))


load_builtin_runners()

__all__ = ["RUNNERS", "BackendUnavailable", "EngineFiles", "plugin_modules", "require"]
