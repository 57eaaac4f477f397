"""Rank budgets: `TTConfig(ratio=30)` spreads TT ranks over the selected layers (Linear and
Conv2d alike) by one global criterion instead of one cap for every layer.

For a TT-matrix, TT-SVD's squared error is at most the sum over bonds of the squared singular
values each bond's unfolding drops (Oseledets 2011, Thm 2.2). Those spectra are computed once per
layer; then, from rank 1 everywhere, the allocator repeatedly raises the one bond rank (in any
layer) that removes the most relative squared error per added parameter, while the selected
layers' parameters stay within their dense total / ratio. A Conv2d is the TT-matrix TTConv2d
stores (out, kh*kw*in) with modes (kh*kw, c_1..c_d) x (1, s_1..s_d); layers the allocator cannot
plan (grouped convs) stay as they are and count against the budget.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.layers import TTConv2d, TTLinear


def matrix_modes(linear: nn.Linear) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The modes `TTLinear.from_dense` would use for this layer."""
    probe = TTLinear(linear.in_features, linear.out_features, ranks=1, bias=False)
    return probe.in_modes, probe.out_modes


def tt_matrix(layer: nn.Linear | nn.Conv2d) -> tuple[torch.Tensor, tuple, tuple]:
    """(weight as the TT-matrix's dense (out, in) matrix, in_modes, out_modes), as
    `TTLinear.from_dense` / `TTConv2d.from_dense` factorise it."""
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        in_modes, out_modes = matrix_modes(layer)
        return w, in_modes, out_modes
    probe = TTConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, ranks=1, bias=False)
    s, c = layer.out_channels, layer.in_channels
    positions = layer.kernel_size[0] * layer.kernel_size[1]
    matrix = w.reshape(s, c, positions).transpose(1, 2).reshape(s, positions * c)
    return matrix, (positions, *probe.in_modes), (1, *probe.out_modes)


def bond_spectra(layer: nn.Linear | nn.Conv2d) -> tuple[list[int], list[torch.Tensor], float]:
    """Mode sizes n_k * m_k, the squared singular values of every bond's unfolding (of the
    interleaved TT-matrix tensor) and the squared Frobenius norm of the weight."""
    matrix, in_modes, out_modes = tt_matrix(layer)
    d = len(in_modes)
    sizes = [n * m for n, m in zip(in_modes, out_modes, strict=True)]
    w = matrix.reshape(*out_modes, *in_modes)
    w = w.permute([i for k in range(d) for i in (d + k, k)]).reshape(sizes)
    spectra = [
        leading_squared_singular_values(w.reshape(math.prod(sizes[: k + 1]), -1))
        for k in range(d - 1)
    ]
    return sizes, spectra, float(w.pow(2).sum())


# Unfoldings up to this smaller side get their whole spectrum (eigenvalues of the Gram matrix,
# cheap: side x elements); bigger ones only their PLAN_MAX_RANK leading values, estimated by a
# randomized SVD in float32, and the planner gives no bond a higher rank. Full SVDs of every
# unfolding made planning vgg's 25088 x 4096 classifier take minutes (issue 25).
EXACT_PLAN_SIDE = 512
PLAN_MAX_RANK = 128
# the planner starts every bond here (or at its largest useful rank if smaller): a rank-1 bond
# splits a layer into two independent halves, which the greedy allocator left in place next to
# rank-1024 bonds when it started from 1
MIN_BOND_RANK = 4


def leading_squared_singular_values(a: torch.Tensor) -> torch.Tensor:
    """Squared singular values of `a`, descending, float64: all of them for a small side up to
    EXACT_PLAN_SIDE, else the PLAN_MAX_RANK largest (randomized, 2 power iterations)."""
    rows, cols = a.shape
    if min(rows, cols) <= EXACT_PLAN_SIDE:
        gram = a @ a.T if rows <= cols else a.T @ a
        return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).double()
    q = min(min(rows, cols), PLAN_MAX_RANK + 10)
    _, s, _ = torch.svd_lowrank(a.float(), q=q, niter=2)
    return (s[:PLAN_MAX_RANK].double() ** 2).sort(descending=True).values


def tt_params(sizes: list[int], ranks: list[int]) -> int:
    """Parameters of TT cores with mode sizes `sizes` and inner bond ranks `ranks`."""
    full = [1, *ranks, 1]
    return sum(full[k] * sizes[k] * full[k + 1] for k in range(len(sizes)))


def allocate_ranks(layers: dict[str, nn.Module], budget: int) -> dict[str, tuple[int, ...]]:
    """Bond ranks per Linear / Conv2d layer whose TT parameters (plus biases) fit `budget`, by
    greedy error reduction per parameter (see the module docstring)."""
    plans = {}
    for name, layer in layers.items():
        sizes, spectra, energy = bond_spectra(layer)
        bias = layer.bias.numel() if layer.bias is not None else 0
        plans[name] = {"sizes": sizes, "spectra": spectra, "energy": energy, "bias": bias}
    for start in (MIN_BOND_RANK, 2, 1):  # the highest start that fits the budget
        for plan in plans.values():
            plan["ranks"] = [min(start, len(spectrum)) for spectrum in plan["spectra"]]
        used = sum(tt_params(p["sizes"], p["ranks"]) + p["bias"] for p in plans.values())
        if used <= budget:
            break
    else:
        raise ConfigError(
            f"even rank 1 everywhere needs {used:,} parameters, above the budget {budget:,}; "
            "lower the ratio"
        )

    def gain(name: str, bond: int) -> tuple[float, int] | None:
        plan = plans[name]
        ranks, spectrum = plan["ranks"], plan["spectra"][bond]
        if ranks[bond] >= len(spectrum):
            return None
        trial = list(ranks)
        trial[bond] += 1
        cost = tt_params(plan["sizes"], trial) - tt_params(plan["sizes"], ranks)
        return float(spectrum[ranks[bond]]) / plan["energy"] / cost, cost

    heap = []
    for name, plan in plans.items():
        for bond in range(len(plan["ranks"])):
            step = gain(name, bond)
            if step:
                heapq.heappush(heap, (-step[0], name, bond, step[1], 1))
    while heap:
        _, name, bond, cost, rank = heapq.heappop(heap)
        current = gain(name, bond)
        if current is None:
            continue
        if current[1] != cost or plans[name]["ranks"][bond] != rank:  # stale entry
            heapq.heappush(heap, (-current[0], name, bond, current[1], plans[name]["ranks"][bond]))
            continue
        if used + cost > budget:
            continue  # too big now; a cheaper step elsewhere may still fit
        plans[name]["ranks"][bond] += 1
        used += cost
        for neighbour in (bond - 1, bond, bond + 1):
            if 0 <= neighbour < len(plans[name]["ranks"]):
                step = gain(name, neighbour)
                if step:
                    rank = plans[name]["ranks"][neighbour]
                    heapq.heappush(heap, (-step[0], name, neighbour, step[1], rank))
    return {name: tuple(plan["ranks"]) for name, plan in plans.items()}
