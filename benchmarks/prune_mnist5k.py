"""Seed 001's comparison on what 2 CPU cores can train: relevance vs L1 vs Euclidean pruning.

vgg16-cifar and resnet18-cifar at width 0.25 (a quarter of every channel count, so an epoch on
mnist5k's 3,500 28x28 training images takes seconds), same 60 % filter sparsity and the same
total epochs for every method:
- baseline: `--base-epochs` of ordinary training;
- L1 / Euclidean: prune the baseline, then fine-tune `--finetune-epochs`;
- relevance: continue from the baseline for `--finetune-epochs` with the relevance pruner
  removing filters while it trains (so it also gets base + finetune epochs in all).
Reports test accuracy, parameters, multiply-adds and ONNX Runtime latency (batch 1 and 32,
interleaved medians) of the compacted models. Writes benchmarks/results/prune_mnist5k.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from kompakt.data import load_dataset
from kompakt.export import export_onnx
from kompakt.inspect import inspect_model
from kompakt.runtime_bench.timing import interleaved_medians, save_results
from kompakt.train import TrainConfig, fit, load_checkpoint, model_from_checkpoint
from kompakt.train.prune import prune_checkpoint

MODELS = ("vgg16-cifar", "resnet18-cifar")
METHODS = ("l1", "euclidean", "relevance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--work", default="runs/bench_prune")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "prune_mnist5k.json")
    )
    args = parser.parse_args(argv)
    work = Path(args.work)
    x, y = load_dataset("mnist5k").split("test")
    rows = []
    for name in MODELS:
        base = work / name / "base"
        fit(
            TrainConfig(
                model=name,
                data="mnist5k",
                epochs=args.base_epochs,
                out=str(base),
                quiet=True,
                model_kwargs={"width": args.width},
            )
        )
        variants = {"dense (no pruning)": str(base / "best.pt")}
        for method in METHODS:
            result = prune_checkpoint(
                str(base / "best.pt"),
                method,
                args.ratio,
                args.finetune_epochs,
                str(work / name / method),
                quiet=True,
            )
            variants[method] = result["best"]
        sessions = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, ckpt_path in variants.items():
                ckpt = load_checkpoint(ckpt_path)
                model = model_from_checkpoint(ckpt)
                table = inspect_model(model, tuple(ckpt["data"]["input_shape"]))
                onnx_path = Path(tmp) / f"{label.split()[0]}.onnx"
                export_onnx(ckpt_path, onnx_path)
                options = ort.SessionOptions()
                options.intra_op_num_threads = 2
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sessions[label] = ort.InferenceSession(str(onnx_path), options)
                val = ckpt["metrics"].get("val", {})
                rows.append(
                    {
                        "model": name,
                        "method": label,
                        "params": table["total_params"],
                        "macs": table["total_macs"],
                        "filter_sparsity": val.get("filter_sparsity"),
                        "test_top1": None,
                    }
                )
                with torch.no_grad():
                    acc = float((model(x).argmax(1) == y).float().mean())
                rows[-1]["test_top1"] = round(acc, 4)
            for batch in (1, 32):
                xb = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
                med = interleaved_medians(
                    {
                        k: (lambda s=s, xb=xb: s.run(None, {"input": xb}))
                        for k, s in sessions.items()
                    },
                    args.runs,
                    10,
                )
                for row in rows:
                    if row["model"] == name and row["method"] in med:
                        row[f"ort_ms_b{batch}"] = round(med[row["method"]] * 1e3, 4)
    save_results(
        args.out,
        "prune_mnist5k",
        {
            "base_epochs": args.base_epochs,
            "finetune_epochs": args.finetune_epochs,
            "ratio": args.ratio,
            "width": args.width,
            "dataset": "mnist5k test split",
        },
        rows=rows,
    )
    print(
        f"{'model':<16} {'method':<20} {'params':>9} {'MACs':>11} {'top-1':>7} {'b1 ms':>7} "
        f"{'b32 ms':>7}"
    )
    for r in rows:
        print(
            f"{r['model']:<16} {r['method']:<20} {r['params']:>9,} {r['macs']:>11,} "
            f"{100 * r['test_top1']:>6.2f}% {r['ort_ms_b1']:>7.3f} {r['ort_ms_b32']:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
