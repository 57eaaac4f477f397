"""Export to ONNX (standard ops only), checks, and the static TensorRT lint."""

from kompakt.export.exporter import (
    ExportConfig,
    ExportError,
    ExportMetadata,
    ExportReport,
    export_checkpoint,
    export_onnx,
)
from kompakt.export.fc_to_conv import fc_to_conv
from kompakt.export.trt_lint import LintIssue, LintReport, lint_trt

__all__ = [
    "ExportConfig",
    "ExportError",
    "ExportMetadata",
    "ExportReport",
    "LintIssue",
    "LintReport",
    "export_checkpoint",
    "export_onnx",
    "fc_to_conv",
    "lint_trt",
]
