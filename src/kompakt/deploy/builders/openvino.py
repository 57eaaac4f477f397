"""OpenVINO builder: the IR (fp32, or half weights for fp16) for the CPU device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kompakt.deploy.builders.base import BACKENDS, Artefact, Backend, BuildOptions, Capabilities

MAX_IR_GROWTH = 1.1  # an IR larger than this times the ONNX graph is not shipped


@BACKENDS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoBackend(Backend):
    name = "openvino"
    distributions = ("openvino",)
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
        backend_options = {"device": "CPU", "threads": options.threads}
        ir_bytes = (bundle / "model.xml").stat().st_size + (bundle / "model.bin").stat().st_size
        if ir_bytes > MAX_IR_GROWTH * model.stat().st_size:
            # The conversion folded weights the graph rebuilds from factors (TT-conv kernels)
            # into dense constants. OpenVINO reads ONNX itself and folds them in memory at
            # load, so ship the smaller graph (benchmarks/precision.py: no slower).
            (bundle / "model.xml").unlink()
            (bundle / "model.bin").unlink()
            note = (
                f"the IR was {ir_bytes / model.stat().st_size:.1f}x the ONNX graph (folded "
                "factored weights); shipping the ONNX graph, which OpenVINO reads and folds at load"
            )
            return Artefact(
                model.name,
                backend_options=backend_options,
                info={"openvino": ov.__version__, "note": note},
            )
        return Artefact(
            "model.xml",
            extra=["model.bin"],
            backend_options=backend_options,
            info={"openvino": ov.__version__},
        )
