"""Deploy: ONNX -> bundles for ONNX Runtime, OpenVINO and TensorRT in FP32 / FP16 / INT8."""

from kompakt.deploy.builders import BACKENDS, BuildOptions, Capabilities, list_backends
from kompakt.deploy.bundle import DeployConfig, build_bundle

__all__ = [
    "BACKENDS",
    "BuildOptions",
    "Capabilities",
    "DeployConfig",
    "build_bundle",
    "list_backends",
]
