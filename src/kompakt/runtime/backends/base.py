"""The runtime backend registry and the one way to import an optional SDK."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class EngineFiles:
    """What a runner loads: the bytes of the bundle's artefact files, each read once and (when
    the engine loads a bundle) hashed from these very bytes, so the backend runs what was
    checked; nothing is re-opened by path. `directory` is only for what a backend writes at
    run time (the TensorRT EP's caches) and for messages."""

    directory: Path
    main: str  # the artefact's path inside the bundle
    contents: Mapping[str, bytes]  # every artefact file by its path inside the bundle

    @property
    def path(self) -> Path:
        return self.directory / self.main

    @property
    def data(self) -> bytes:
        return self.contents[self.main]

    def extra(self) -> dict[str, bytes]:
        """The files beside the main one (external weights, an IR's .bin)."""
        return {k: v for k, v in self.contents.items() if k != self.main}

    @classmethod
    def read(cls, directory: Path, manifest: dict) -> EngineFiles:
        """A bundle still being built (no hashes yet): its artefact files read as they are."""
        names = [manifest["artifact"], *manifest.get("artifact_files", [])]
        return cls(
            directory, manifest["artifact"], {n: (directory / n).read_bytes() for n in names}
        )
