"""FP32 vs INT8 on ONNX Runtime CPU and OpenVINO CPU, side by side, on mnist5k models.

Models: lenet5, garipov-conv, and garipov-tt-conv-tt-fc (TT-compressed), trained on mnist5k
(--epochs; checkpoints reused from --work when present). Each is exported once and deployed to
{onnxruntime, openvino} x {fp32, int8} (INT8 calibrated on 256 train-split images); latency at
batch 1 and 32 (interleaved medians, 2 threads) and top-1 accuracy on the test split through the
engine. Goal: INT8 >= 1.5x faster with <= 1 point accuracy drop on the conv models.
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
from kompakt.runtime_bench.timing import interleaved_medians, save_results
from kompakt.train import TrainConfig, fit

MODELS = ("lenet5", "garipov-conv", "garipov-tt-conv-tt-fc")


def accuracy(engine, x: np.ndarray, y: np.ndarray) -> float:
    logits = np.concatenate([engine.run(x[i : i + 64]) for i in range(0, len(x), 64)])
    return float((logits.argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
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
    data = load_dataset("mnist5k")
    x_test, y_test = data.x["test"].numpy(), data.y["test"].numpy()
    rows = []
    for name in MODELS:
        run = work / name
        if not (run / "best.pt").is_file():
            fit(
                TrainConfig(
                    model=name, data="mnist5k", epochs=args.epochs, out=str(run), quiet=True
                )
            )
        onnx_path = run / "model.onnx"
        export_onnx(run / "best.pt", onnx_path)
        engines = {}
        for backend in backends:
            for precision in ("fp32", "int8"):
                bundle = run / f"{backend}-{precision}"
                build_bundle(
                    onnx_path,
                    bundle,
                    DeployConfig(
                        backend=backend, precision=precision, force=True, calib_data="mnist5k"
                    ),
                    BuildOptions(threads=args.threads, max_batch=64),
                )
                engines[(backend, precision)] = load(bundle, threads=args.threads)
        for batch in (1, 32):
            x = x_test[:batch]
            med = interleaved_medians(
                {k: (lambda e=e, x=x: e.run(x)) for k, e in engines.items()}, args.runs, 10
            )
            for (backend, precision), seconds in med.items():
                rows.append(
                    {
                        "model": name,
                        "backend": backend,
                        "precision": precision,
                        "batch": batch,
                        "ms": round(seconds * 1e3, 4),
                        "speedup_vs_fp32": round(med[(backend, "fp32")] / seconds, 2),
                        "vs_onnxruntime_same_precision": round(
                            med[("onnxruntime", precision)] / seconds, 2
                        ),
                    }
                )
        for (backend, precision), engine in engines.items():
            acc = accuracy(engine, x_test, y_test)
            for row in rows:
                if (row["model"], row["backend"], row["precision"]) == (name, backend, precision):
                    row["test_top1"] = round(acc, 4)
            engine.close()
    for row in rows:
        fp32 = next(
            r
            for r in rows
            if (r["model"], r["backend"], r["batch"], r["precision"])
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
            "calibration": "256 train-split images, minmax",
        },
        rows=rows,
    )
    print(
        f"{'model':<22} {'backend':<12} {'prec':<5} {'batch':>5} {'ms':>8} {'vs fp32':>8} "
        f"{'vs ORT':>7} {'top-1':>7} {'drop':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:<22} {r['backend']:<12} {r['precision']:<5} {r['batch']:>5} "
            f"{r['ms']:>8.3f} {r['speedup_vs_fp32']:>7.2f}x "
            f"{r['vs_onnxruntime_same_precision']:>6.2f}x {r['test_top1']:>7.4f} "
            f"{r['drop_points']:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
