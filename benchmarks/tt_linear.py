"""TTLinear vs dense nn.Linear in PyTorch on the CPU, measured side by side in one process.

Run: python benchmarks/tt_linear.py [--runs 50] [--threads 2]
Writes benchmarks/results/tt_linear.json (with the machine) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kompakt.layers import TTLinear
from kompakt.runtime_bench.timing import save_results

CASES = [
    # name, in, out, in_modes, out_modes, rank
    ("novikov 25088->4096 r4", 25088, 4096, (2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4), 4),
    # modes None: kompakt's balanced factorisation, ordered for the fewest multiply-adds
    ("garipov fc1 8192->1536 r8", 8192, 1536, None, None, 8),
    ("garipov fc1 8192->1536 r40", 8192, 1536, None, None, 40),
]
BATCHES = (1, 64)


def median_seconds(fn, x: torch.Tensor, runs: int, warmup: int) -> float:
    """Median wall time of fn(x) after warm-up (CPU: no device sync needed)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tt_linear.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    jobs = [(case, batch) for case in CASES for batch in BATCHES]
    for (name, n_in, n_out, in_modes, out_modes, rank), batch in tqdm(jobs, desc="tt_linear"):
        dense = nn.Linear(n_in, n_out).eval()
        tt = TTLinear(n_in, n_out, in_modes, out_modes, ranks=rank).eval()
        x = torch.randn(batch, n_in)
        # interleave the two so drift hits both equally: dense, tt, dense, tt
        t_dense, t_tt = [], []
        for _ in range(2):
            t_dense.append(median_seconds(dense, x, args.runs // 2, args.warmup))
            t_tt.append(median_seconds(tt, x, args.runs // 2, args.warmup))
        t_dense, t_tt = statistics.mean(t_dense), statistics.mean(t_tt)
        macs_ratio = (
            dense.in_features
            * dense.out_features
            * batch
            / (tt.forward_macs(batch) - batch * n_out)
        )
        speedup = t_dense / t_tt
        rows.append(
            {
                "case": name,
                "batch": batch,
                "in_modes": list(tt.in_modes),
                "out_modes": list(tt.out_modes),
                "ranks": list(tt.ranks),
                "direction": tt.direction,
                "core_params": tt.core_params(),
                "compression": round(tt.compression_ratio(), 1),
                "dense_ms": round(t_dense * 1e3, 4),
                "tt_ms": round(t_tt * 1e3, 4),
                "speedup": round(speedup, 2),
                "macs_ratio": round(macs_ratio, 2),
                "achieved_fraction": round(speedup / macs_ratio, 3),
            }
        )
        del dense, tt

    result = save_results(
        args.out,
        "tt_linear",
        {
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": args.threads,
            "framework": "pytorch eager, inference_mode, float32",
        },
        rows=rows,
    )
    out = args.out

    header = (
        f"{'case':<28} {'batch':>5} {'dense ms':>9} {'tt ms':>8} {'speedup':>8} "
        f"{'MAC ratio':>9} {'achieved':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<28} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['tt_ms']:>8.3f} "
            f"{r['speedup']:>7.1f}x {r['macs_ratio']:>8.1f}x {r['achieved_fraction']:>8.2f}"
        )
    print(
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"threads={args.threads}; saved {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
