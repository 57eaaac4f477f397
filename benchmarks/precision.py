"""FP32 vs INT8 (portable and full-range schemes) vs --precision auto, on ONNX Runtime CPU and
OpenVINO CPU, side by side, on mnist5k models; plus the INT8 calibration methods compared.

Models: lenet5, garipov-conv, garipov-tt-conv-tt-fc (TT-compressed) and resnet18-cifar (width
0.25), trained on mnist5k (--epochs; checkpoints reused from --work when present). Each is
exported once and deployed to {onnxruntime, openvino} x {fp32, int8 portable, int8 full-range,
auto} (INT8 calibrated on 256 train-split images); latency at batch 1 and 32 (interleaved
medians, 2 threads), top-1 on the test split through the engine, artefact size next to the ONNX
size, and the golden-sample drift re-measured by `Engine.verify`. Then minmax / entropy /
percentile calibration (portable INT8, ONNX Runtime): accuracy drop per model.

Goals (issue 10): garipov-conv INT8 portable >= 1.5x faster than FP32 at <= 1 point on the
machine it runs on; auto never slower than FP32 at batch 32; TT bundles <= 1.1x their ONNX.
Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kompakt.data import load_dataset
from kompakt.deploy import BuildOptions, DeployConfig, build_bundle, list_backends
from kompakt.export import export_onnx
from kompakt.runtime import load
from kompakt.runtime.cpu import int8_isa
from kompakt.runtime_bench.timing import interleaved_medians, save_results
from kompakt.train import TrainConfig, fit

MODELS = {
    "lenet5": {},
    "garipov-conv": {},
    "garipov-tt-conv-tt-fc": {},
    "resnet18-cifar": {"width": 0.25},
}
VARIANTS = {  # label -> DeployConfig settings
    "fp32": {"precision": "fp32"},
    "int8-portable": {"precision": "int8", "int8_scheme": "portable"},
    "int8-full-range": {"precision": "int8", "int8_scheme": "full-range"},
    "auto": {"precision": "auto"},
}


def accuracy(engine, x: np.ndarray, y: np.ndarray) -> float:
    logits = np.concatenate([engine.run(x[i : i + 64]) for i in range(0, len(x), 64)])
    return float((logits.argmax(1) == y).mean())


def artefact_kib(manifest: dict) -> float:
    return sum(manifest["files"][f]["bytes"] for f in manifest["artifact_files"]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="runs/bench_precision")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "precision.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    backends = [
        b
        for b in ("onnxruntime", "openvino")
        if any(r["name"] == b and r["available"] for r in list_backends())
    ]
    isa = int8_isa()
    data = load_dataset("mnist5k")
    x_test, y_test = data.x["test"].numpy(), data.y["test"].numpy()
    rows, calibration = [], []
    for name, kwargs in MODELS.items():
        run = work / name
        if not (run / "best.pt").is_file():
            fit(
                TrainConfig(
                    model=name,
                    data="mnist5k",
                    epochs=args.epochs,
                    out=str(run),
                    quiet=True,
                    model_kwargs=kwargs,
                )
            )
        onnx_path = run / "model.onnx"
        export_onnx(run / "best.pt", onnx_path)
        onnx_kib = onnx_path.stat().st_size / 1024
        engines, manifests = {}, {}
        for backend in backends:
            for label, settings in VARIANTS.items():
                if label == "int8-full-range" and isa["saturates_full_range"]:
                    continue  # this CPU would refuse it at load (and compute it wrong)
                bundle = run / f"{backend}-{label}"
                manifests[(backend, label)] = build_bundle(
                    onnx_path,
                    bundle,
                    DeployConfig(backend=backend, force=True, calib_data="mnist5k", **settings),
                    BuildOptions(threads=args.threads, max_batch=64),
                )
                engines[(backend, label)] = load(bundle, threads=args.threads)
        for batch in (1, 32):
            x = x_test[:batch]
            med = interleaved_medians(
                {k: (lambda e=e, x=x: e.run(x)) for k, e in engines.items()}, args.runs, 10
            )
            for (backend, label), seconds in med.items():
                manifest = manifests[(backend, label)]
                rows.append(
                    {
                        "model": name,
                        "backend": backend,
                        "variant": label,
                        "precision": manifest["precision"],
                        "batch": batch,
                        "ms": round(seconds * 1e3, 4),
                        "speedup_vs_fp32": round(med[(backend, "fp32")] / seconds, 2),
                        "onnx_kib": round(onnx_kib, 1),
                        "artefact_kib": round(artefact_kib(manifest), 1),
                        "artefact_vs_onnx": round(artefact_kib(manifest) / onnx_kib, 2),
                    }
                )
        for (backend, label), engine in engines.items():
            acc = accuracy(engine, x_test, y_test)
            drift = engine.verify()
            for row in rows:
                if (row["model"], row["backend"], row["variant"]) == (name, backend, label):
                    row["test_top1"] = round(acc, 4)
                    row["golden_max_rel"] = float(f"{drift['max_rel']:.3g}")
                    row["golden_ok"] = drift["ok"]
            engine.close()
        for method in ("minmax", "entropy", "percentile"):
            manifest = build_bundle(
                onnx_path,
                run / f"calib-{method}",
                DeployConfig(
                    precision="int8",
                    calib_method=method,
                    force=True,
                    calib_data="mnist5k",
                    eval_samples=1000,
                ),
                BuildOptions(threads=args.threads, max_batch=64),
            )
            calibration.append(
                {
                    "model": name,
                    "method": method,
                    "val_drop_points": manifest["accuracy"]["drop_points"],
                    "max_rel_vs_fp32": round(manifest["parity"]["vs_source_onnx"]["max_rel"], 4),
                }
            )
    for row in rows:
        fp32 = next(
            r
            for r in rows
            if (r["model"], r["backend"], r["batch"], r["variant"])
            == (row["model"], row["backend"], row["batch"], "fp32")
        )
        row["drop_points"] = round(100 * (fp32["test_top1"] - row["test_top1"]), 2)
    save_results(
        args.out,
        "precision",
        {
            "runs": args.runs,
            "threads": args.threads,
            "epochs": args.epochs,
            "dataset": "mnist5k test split",
            "calibration": "256 train-split images, minmax (the calibration table: all three)",
            "int8_isa": isa,
        },
        rows=rows,
        calibration=calibration,
    )
    print(
        f"{'model':<22} {'backend':<12} {'variant':<16} {'batch':>5} {'ms':>8} {'vs fp32':>8} "
        f"{'KiB':>8} {'/onnx':>6} {'top-1':>7} {'drop':>6} {'golden':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:<22} {r['backend']:<12} {r['variant'] + '=' + r['precision']:<16} "
            f"{r['batch']:>5} {r['ms']:>8.3f} {r['speedup_vs_fp32']:>7.2f}x "
            f"{r['artefact_kib']:>8.1f} {r['artefact_vs_onnx']:>6.2f} {r['test_top1']:>7.4f} "
            f"{r['drop_points']:>6.2f} {r['golden_max_rel']:>9.2g}"
        )
    for c in calibration:
        print(f"{c['model']:<22} calib {c['method']:<10} val drop {c['val_drop_points']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
