"""Engine.run vs a raw onnxruntime.InferenceSession.run on the same artefact, side by side.

lenet5 and garipov-conv (28x28x1 inputs, random weights: overhead does not depend on training),
batches 1 and 32, 2 intra-op threads, spinning off, interleaved, median of --runs.
Goal: Engine overhead <= 5 % or <= 20 us. Writes benchmarks/results/runtime_overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from kompakt.deploy import BuildOptions, DeployConfig, build_bundle
from kompakt.export import export_onnx
from kompakt.models import build_model
from kompakt.runtime import load
from kompakt.runtime_bench.timing import interleaved_medians, save_results

MODELS = ("lenet5", "garipov-conv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "runtime_overhead.json")
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            torch.manual_seed(0)
            model = build_model(name, 10, 1, 28).eval()
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, onnx_path, example_input=torch.randn(2, 1, 28, 28))
            bundle = Path(tmp) / name
            build_bundle(
                onnx_path, bundle, DeployConfig(), BuildOptions(threads=args.threads, max_batch=64)
            )
            engine = load(bundle, threads=args.threads)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            raw = ort.InferenceSession(
                str(bundle / engine.manifest["artifact"]),
                options,
                providers=["CPUExecutionProvider"],
            )
            for batch in (1, 32):
                x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
                med = interleaved_medians(
                    {
                        "raw": lambda raw=raw, x=x: raw.run(None, {"input": x}),
                        "engine": lambda engine=engine, x=x: engine.run(x),
                    },
                    args.runs,
                    20,
                )
                overhead_us = (med["engine"] - med["raw"]) * 1e6
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "raw_us": round(med["raw"] * 1e6, 1),
                        "engine_us": round(med["engine"] * 1e6, 1),
                        "overhead_us": round(overhead_us, 1),
                        "overhead_pct": round(100 * overhead_us / (med["raw"] * 1e6), 2),
                        "goal_met": overhead_us <= 20 or overhead_us <= 0.05 * med["raw"] * 1e6,
                    }
                )
            engine.close()
    save_results(
        args.out,
        "runtime_overhead",
        {
            "runs": args.runs,
            "threads": args.threads,
            "statistic": "median, interleaved",
        },
        rows=rows,
    )
    print(f"{'model':<14} {'batch':>5} {'raw us':>9} {'engine us':>10} {'overhead':>14} goal")
    for r in rows:
        goal = "met" if r["goal_met"] else "MISSED"
        print(
            f"{r['model']:<14} {r['batch']:>5} {r['raw_us']:>9.1f} {r['engine_us']:>10.1f} "
            f"{r['overhead_us']:>6.1f} us {r['overhead_pct']:>5.1f}% {goal}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
