"""What apps embed: load a bundle and run it. Needs numpy and the chosen backend only.

import kompakt.runtime
with kompakt.runtime.load("bundle/") as engine:
    print(engine.predict([image])[0].label)
"""

from kompakt.runtime.backends import RUNNERS, require
from kompakt.runtime.engine import (
    BackendUnavailable,
    Engine,
    Prediction,
    TensorSpec,
    load,
)
from kompakt.runtime.golden import GoldenDriftError
from kompakt.runtime.manifest import BundleError, read_manifest, validate_manifest

__all__ = [
    "RUNNERS",
    "BackendUnavailable",
    "BundleError",
    "Engine",
    "GoldenDriftError",
    "Prediction",
    "TensorSpec",
    "load",
    "read_manifest",
    "require",
    "validate_manifest",
]
