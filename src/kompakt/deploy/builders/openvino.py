"""OpenVINO builder: the IR (fp32, or half weights for fp16) for the CPU device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kompakt.deploy.builders.base import BACKENDS, Artefact, Backend, BuildOptions, Capabilities


@BACKENDS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoBackend(Backend):
    name = "openvino"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), device="cpu")
    needs = "pip install 'kompakt[openvino]'"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return f"the openvino package is not installed; {self.needs}"
        return None

    def build(self, model: Path, bundle: Path, precision: str, options: BuildOptions) -> Artefact:
        import openvino as ov

        ir = ov.convert_model(str(model))
        # fp16: weights stored in half precision; the CPU plugin computes in fp32/bf16
        ov.save_model(ir, str(bundle / "model.xml"), compress_to_fp16=precision == "fp16")
        return Artefact(
            "model.xml",
            extra=["model.bin"],
            backend_options={"device": "CPU", "threads": options.threads},
            info={"openvino": ov.__version__},
        )
