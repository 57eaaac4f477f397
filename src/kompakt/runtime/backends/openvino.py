"""OpenVINO runner: the IR compiled for the CPU device."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from kompakt.runtime.backends.base import RUNNERS, require


@RUNNERS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoRunner:
    """One compiled model; one infer request per thread (requests are not thread-safe)."""

    sdk = "openvino"

    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        ov = require("openvino", "openvino", "the openvino backend")
        core = ov.Core()
        config: dict = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if manifest.get("precision") == "fp32":
            # the CPU plugin computes in bf16 where the CPU has it, unless told otherwise
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.local = threading.local()

    def run(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self.compiled = None
