"""Deploy: ONNX -> bundles for ONNX Runtime, OpenVINO and TensorRT in FP32 / FP16 / INT8.

The bundle builder (onnx, numpy) is loaded on first use, so listing the backends stays fast.
"""

from kompakt.deploy.builders import BACKENDS, BuildOptions, Capabilities, list_backends

_LAZY = {"DeployConfig", "build_bundle"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from kompakt.deploy import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'kompakt.deploy' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "BuildOptions",
    "Capabilities",
    "DeployConfig",
    "build_bundle",
    "list_backends",
]
