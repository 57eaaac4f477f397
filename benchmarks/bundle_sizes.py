"""ONNX graph vs OpenVINO IR vs the artefact kompakt ships, per zoo model (28x28 inputs, as
mnist5k; untrained weights: sizes do not depend on training).

OpenVINO's conversion folds weights that the graph rebuilds from factors (TT-conv kernels) into
dense constants; kompakt then ships the ONNX graph, which OpenVINO reads and folds at load.
Writes benchmarks/results/bundle_sizes.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from kompakt.deploy import BuildOptions, DeployConfig, build_bundle, list_backends
from kompakt.export import ExportConfig, export_onnx
from kompakt.models import MODELS, build_model
from kompakt.runtime_bench.timing import save_results

SMALL = {"resnet18-cifar": {"width": 0.25}, "vgg16-cifar": {"width": 0.25}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bundle_sizes.json")
    )
    args = parser.parse_args(argv)
    if not any(r["name"] == "openvino" and r["available"] for r in list_backends()):
        print("openvino is not installed: nothing to compare")
        return 0
    import openvino as ov

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in MODELS.names():
            torch.manual_seed(0)
            model = build_model(name, 10, 1, 28, **SMALL.get(name, {})).eval()
            onnx_path = root / f"{name}.onnx"
            export_onnx(
                model,
                onnx_path,
                ExportConfig(max_batch=64),
                example_input=torch.randn(4, 1, 28, 28),
            )
            ir = ov.convert_model(str(onnx_path))
            ov.save_model(ir, str(root / f"{name}.xml"), compress_to_fp16=False)
            ir_bytes = (root / f"{name}.xml").stat().st_size + (root / f"{name}.bin").stat().st_size
            manifest = build_bundle(
                onnx_path,
                root / f"{name}-ov",
                DeployConfig(backend="openvino", eval_samples=8),
                BuildOptions(max_batch=64),
            )
            shipped = sum(manifest["files"][f]["bytes"] for f in manifest["artifact_files"])
            onnx_kib = onnx_path.stat().st_size / 1024
            rows.append(
                {
                    "model": name,
                    "onnx_kib": round(onnx_kib, 1),
                    "ir_kib": round(ir_bytes / 1024, 1),
                    "shipped": manifest["artifact"],
                    "shipped_kib": round(shipped / 1024, 1),
                    "shipped_vs_onnx": round(shipped / 1024 / onnx_kib, 2),
                }
            )
            r = rows[-1]
            print(
                f"{name:<24} ONNX {r['onnx_kib']:>9.1f} KiB  IR {r['ir_kib']:>9.1f} KiB  "
                f"shipped {r['shipped']:<11} {r['shipped_kib']:>9.1f} KiB"
            )
    save_results(
        args.out, "bundle_sizes", {"input": [1, 28, 28], "backend": "openvino fp32"}, rows=rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
