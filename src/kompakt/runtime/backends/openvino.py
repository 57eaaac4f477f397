"""OpenVINO runner: the IR compiled for the CPU device."""

from __future__ import annotations

import threading

import numpy as np

from kompakt.runtime.backends.base import RUNNERS, EngineFiles, require
from kompakt.runtime.files import BundleError


def _model(ov, core, files: EngineFiles):
    """The model read from the checked bytes: an IR's XML with its weights (.bin) from memory,
    or an ONNX graph. From bytes OpenVINO would resolve ONNX external data against the working
    directory, so such a graph is refused (kompakt's OpenVINO builder ships none)."""
    if files.main.endswith(".xml"):
        weights = b"".join(files.extra().values())
        tensor = ov.Tensor(np.frombuffer(weights, np.uint8).copy()) if weights else ov.Tensor()
        return core.read_model(files.data.decode("utf-8"), tensor)
    if b"\x0a\x08location" in files.data:  # an external_data entry's key (field 1, "location")
        raise BundleError(
            f"{files.main} refers to external weight files, which the openvino runtime does "
            "not load from a bundle; rebuild the bundle with kompakt deploy"
        )
    return core.read_model(files.data, b"")


@RUNNERS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoRunner:
    """One compiled model; one infer request per thread (requests are not thread-safe)."""

    sdk = "openvino"

    def __init__(self, files: EngineFiles, manifest: dict, threads: int | None) -> None:
        ov = require("openvino", "openvino", "the openvino backend")
        core = ov.Core()
        config: dict = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if manifest.get("precision") == "fp32":
            # the CPU plugin computes in bf16 where the CPU has it, unless told otherwise
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(_model(ov, core, files), "CPU", config)
        self.local = threading.local()

    def run(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self.compiled = None
