"""Issue experiment: dense vs TT models on mnist5k (28x28), CPU, trained in one run.

Models: lenet5; garipov-conv-fc (dense, 28x28 adaptation: FC 6272-1536-512); garipov-tt-conv-tt-fc
from scratch; and garipov-conv-fc compressed by compress_ (TT-SVD, ranks 8) then fine-tuned.
Writes benchmarks/results/train_mnist5k.json with accuracy (test split), parameters,
compression vs the dense conv-fc, epochs and wall time, plus the machine.

Run: python benchmarks/train_mnist5k.py [--epochs 6] [--finetune-epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kompakt.runtime_bench.timing import save_results
from kompakt.train import TrainConfig, fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--work", default="runs/bench_mnist5k")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "train_mnist5k.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    runs = [
        ("lenet5", dict(model="lenet5")),
        ("garipov-conv-fc (dense)", dict(model="garipov-conv-fc")),
        ("garipov-tt-conv-tt-fc (scratch)", dict(model="garipov-tt-conv-tt-fc")),
        (
            "garipov-conv-fc + compress_ tt:ranks=8 + finetune",
            dict(
                init_from=str(work / "garipov-conv-fc" / "best.pt"),
                compress="tt:ranks=8",
                epochs=args.finetune_epochs,
                lr=0.01,
            ),
        ),
    ]
    rows = []
    for label, overrides in runs:
        key = overrides.get("model", "compressed")
        settings = {
            "data": "mnist5k",
            "epochs": args.epochs,
            "out": str(work / key),
            "batch_size": 64,
            "seed": 0,
            **overrides,
        }
        config = TrainConfig(**settings)
        print(f"== {label}", file=sys.stderr)
        start = time.perf_counter()
        result = fit(config)
        rows.append(
            {
                "model": label,
                "epochs": config.epochs,
                "params": result["params"],
                "test_accuracy": round(result["test"]["accuracy"], 4),
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
    dense = rows[1]["params"]
    for row in rows:
        row["compression_vs_conv_fc"] = round(dense / row["params"], 2)
        row["points_vs_conv_fc"] = round(100 * (row["test_accuracy"] - rows[1]["test_accuracy"]), 2)
    save_results(
        args.out,
        "train_mnist5k",
        {"optimizer": "sgd momentum 0.9, cosine", "batch_size": 64, "threads": 2},
        rows=rows,
    )
    print(
        f"{'model':<52} {'ep':>3} {'params':>10} {'compr':>7} {'test acc':>8} {'Δpt':>6} {'s':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:<52} {r['epochs']:>3} {r['params']:>10,} "
            f"{r['compression_vs_conv_fc']:>6.1f}x {r['test_accuracy']:>8.4f} "
            f"{r['points_vs_conv_fc']:>6.2f} {r['wall_s']:>6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
