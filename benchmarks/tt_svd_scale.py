"""TT-SVD and rank planning at ImageNet scale: the scaled decompositions (randomized range finder
at a capped rank, Gram eigen-decompositions, top-K spectra for planning) against the exact full
SVD of every unfolding they replace, side by side in one run: time and relative error.

Run: python benchmarks/tt_svd_scale.py [--skip-exact]
Writes benchmarks/results/tt_svd_scale.json (with the machine) and prints a table.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from kompakt.compression import TTConfig
from kompakt.layers import TTLinear, tt
from kompakt.models import compress_
from kompakt.runtime_bench.timing import save_results

# vgg's classifier layer (Novikov et al.): the issue-25 case that took 13 s at rank 8
IN, OUT = 25088, 4096


def exact_tt_svd(tensor: torch.Tensor, caps: list[int]) -> list[torch.Tensor]:
    """The reference: a full SVD of every unfolding (what tt_svd did before)."""
    shape, cores, rest, r_prev = tensor.shape, [], tensor, 1
    for k in range(len(shape) - 1):
        rest = rest.reshape(r_prev * shape[k], -1)
        u, s, vh = torch.linalg.svd(rest, full_matrices=False)
        rank = min(caps[k], len(s))
        cores.append(u[:, :rank].reshape(r_prev, shape[k], rank))
        rest, r_prev = s[:rank, None] * vh[:rank], rank
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return cores


def relative_error(weight: torch.Tensor, layer: TTLinear) -> float:
    with torch.no_grad():
        rebuilt = layer.weight_dense().double()
    weight = weight.double()
    return float(torch.linalg.norm(rebuilt - weight) / torch.linalg.norm(weight))


def layer_case(weight: torch.Tensor, ranks, skip_exact: bool) -> dict:
    linear = nn.Linear(IN, OUT, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    start = time.perf_counter()
    fast = TTLinear.from_dense(linear, ranks=ranks)
    row = {"ranks": list(fast.ranks[1:-1]), "fast_s": round(time.perf_counter() - start, 2)}
    row["fast_rel_error"] = relative_error(weight, fast)
    if skip_exact:
        return row
    w = weight.double().reshape(*fast.out_modes, *fast.in_modes)
    d = len(fast.in_modes)
    w = w.permute([i for k in range(d) for i in (d + k, k)])
    w = w.reshape([n * m for n, m in zip(fast.in_modes, fast.out_modes, strict=True)])
    start = time.perf_counter()
    cores = exact_tt_svd(w, list(fast.ranks[1:-1]))
    row["exact_s"] = round(time.perf_counter() - start, 2)
    rebuilt = tt.tt_to_full(cores).reshape(w.shape)
    row["exact_rel_error"] = float(torch.linalg.norm(rebuilt - w) / torch.linalg.norm(w))
    row["speedup"] = round(row["exact_s"] / max(row["fast_s"], 1e-3), 1)
    return row


def structured_weight(seed: int = 0) -> torch.Tensor:
    """A weight with a decaying spectrum, like a trained layer's (a random one is flat, where
    every method's truncation error is ~1 and says nothing)."""
    gen = torch.Generator().manual_seed(seed)
    rank = 256
    left = torch.randn(OUT, rank, generator=gen)
    right = torch.randn(rank, IN, generator=gen)
    decay = torch.tensor([math.exp(-i / 24) for i in range(rank)])
    noise = 1e-3 * torch.randn(OUT, IN, generator=gen)
    return (left * decay) @ right / math.sqrt(IN) + noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-exact", action="store_true", help="only the scaled methods")
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = structured_weight()
    rows = {}
    for ranks in (8, 32):
        rows[f"TT-SVD {IN}x{OUT} rank {ranks}"] = layer_case(weight, ranks, args.skip_exact)
        print(rows, file=sys.stderr, flush=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(IN, OUT), nn.ReLU(), nn.Linear(OUT, 1000))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    start = time.perf_counter()
    report = compress_(model, TTConfig(ratio=10))
    plan_s = round(time.perf_counter() - start, 2)
    rows["ratio 10 over the classifier (plan + TT-SVD)"] = {
        "fast_s": plan_s,
        "layers": report.layers,
        "ranks": [list(getattr(m, "ranks", [])) for m in (model[1], model[3])],
    }
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = Path(__file__).parent / "results" / "tt_svd_scale.json"
    save_results(
        str(path),
        "tt_svd_scale",
        {"layer": f"{IN}x{OUT}", "weight": "rank-256 decaying spectrum + 1e-3 noise"},
        cases=rows,
        peak_rss_mib=round(peak_mib),
    )
    for name, row in rows.items():
        print(f"{name}: {row}")
    print(f"peak RSS {peak_mib:.0f} MiB; wrote {path}")


if __name__ == "__main__":
    main()
