"""Deploy builders, one module per backend: how each turns an ONNX graph into the artefact its
runtime runner (kompakt.runtime.backends) loads, and what it can do (a Capabilities record).

Every module in this package registers its builders in BACKENDS on import; a plugin outside
kompakt registers its own the same way, next to its runner. An unavailable backend stays listed
with the reason and the fix (`kompakt deploy --list-backends`). Heavy SDKs are imported inside
the methods that need them.
"""

from __future__ import annotations

import importlib
import pkgutil

from kompakt.deploy.builders.base import (
    BACKENDS,
    Artefact,
    Backend,
    BuildOptions,
    Capabilities,
    list_backends,
    profile_batches,
)


def load_builtin_builders() -> None:
    """Import every builder module of this package (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


load_builtin_builders()

__all__ = [
    "BACKENDS",
    "Artefact",
    "Backend",
    "BuildOptions",
    "Capabilities",
    "list_backends",
    "profile_batches",
]
