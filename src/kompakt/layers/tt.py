"""Tensor-Train math: TT-SVD, TT-matrices, mode factorisation and exact cost models.

Conventions (Oseledets 2011; Novikov et al. 2015):
- a TT tensor is a list of cores, core k shaped (r_{k-1}, n_k, r_k), r_0 = r_d = 1;
- a TT-matrix W (out_features, in_features) is a list of cores, core k shaped
  (r_{k-1}, in_mode_k, out_mode_k, r_k); row and column indices are row-major multi-indices
  (the first mode is the most significant), so `x.reshape(B, *in_modes)` matches the cores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kompakt.errors import ConfigError

# TensorRT's tensor rank limit is 8 (batch included), and the forward reshapes the input to
# (batch, *modes), so a TT layer may have at most 7 modes.
MAX_MODES = 7

RankSpec = int | Sequence[int] | None


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def factorize(n: int, d: int) -> tuple[int, ...]:
    """A balanced factorisation of `n` into `d` factors, largest first.

    Prime factors are dealt, largest first, to the currently smallest factor, which keeps the
    factors close to n ** (1/d) (the max-entropy choice). When `n` has fewer than `d` prime
    factors the remaining factors are 1.

    Raises:
        ConfigError: if n < 1, d < 1 or d > MAX_MODES.
    """
    check_positive_int(n, "the number to factorise")
    if not isinstance(d, int) or not 1 <= d <= MAX_MODES:
        raise ConfigError(
            f"number of modes must be between 1 and {MAX_MODES} (TensorRT's rank limit is 8 "
            f"including the batch axis), got {d!r}"
        )
    buckets = [1] * d
    for p in sorted(_prime_factors(n), reverse=True):
        buckets[buckets.index(min(buckets))] *= p
    return tuple(sorted(buckets, reverse=True))


def default_num_modes(*features: int) -> int:
    """How many modes a TT layer over these feature sizes gets when the user names none.

    About log8 of the largest size (modes near 8 keep ranks cheap), between 2 and MAX_MODES.
    """
    largest = max(features)
    return max(2, min(MAX_MODES, round(math.log(max(largest, 2), 8))))


def check_modes(modes: Sequence[int], features: int, what: str) -> tuple[int, ...]:
    """Validate that `modes` are positive ints multiplying to `features`."""
    modes = tuple(modes)
    if not 1 <= len(modes) <= MAX_MODES:
        raise ConfigError(
            f"{what} must have 1 to {MAX_MODES} modes (TensorRT's rank limit is 8 including the "
            f"batch axis), got {len(modes)}: {modes}"
        )
    if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in modes):
        raise ConfigError(f"{what} must be positive integers, got {modes}")
    if math.prod(modes) != features:
        raise ConfigError(
            f"{what} {modes} multiply to {math.prod(modes)}, expected {features}; "
            f"pick factors of {features}, e.g. {factorize(features, len(modes))}"
        )
    return modes


def resolve_matrix_modes(
    in_features: int,
    out_features: int,
    in_modes: Sequence[int] | None,
    out_modes: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Fill in missing mode factorisations (balanced) and check the given ones."""
    check_positive_int(in_features, "in_features")
    check_positive_int(out_features, "out_features")
    if in_modes is not None:
        d = len(tuple(in_modes))
    elif out_modes is not None:
        d = len(tuple(out_modes))
    else:
        d = default_num_modes(in_features, out_features)
    in_modes = check_modes(
        factorize(in_features, d) if in_modes is None else in_modes, in_features, "in_modes"
    )
    out_modes = check_modes(
        factorize(out_features, d) if out_modes is None else out_modes, out_features, "out_modes"
    )
    if len(in_modes) != len(out_modes):
        raise ConfigError(
            f"in_modes {in_modes} and out_modes {out_modes} must have the same number of modes"
        )
    return in_modes, out_modes


def order_modes_for_speed(
    in_modes: tuple[int, ...], out_modes: tuple[int, ...], ranks: RankSpec
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Of the ascending/descending orderings of both factorisations, the one whose best
    contraction needs the fewest multiply-adds at the given rank cap.

    The order of modes changes which intermediate states the contraction passes through (up to
    4x apart in multiply-adds for the same factors), while parameters barely change.
    """

    def cost(candidate: tuple[tuple[int, ...], tuple[int, ...]]) -> int:
        n, m = candidate
        full = resolve_ranks(
            ranks if isinstance(ranks, int) else None, [a * b for a, b in zip(n, m, strict=True)]
        )
        return min(tt_matvec_macs(n, m, full, 1, d) for d in ("ltr", "rtl"))

    orders = {
        (tuple(sorted(in_modes, reverse=a)), tuple(sorted(out_modes, reverse=b)))
        for a in (False, True)
        for b in (False, True)
    }
    return min(sorted(orders), key=cost)


def max_ranks(mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Largest useful rank at each of the d-1 bonds of a TT tensor with these mode sizes.

    Bond k separates modes [0, k] from [k+1, d); a rank above the smaller side's size adds
    parameters but cannot add expressiveness.
    """
    sizes = list(mode_sizes)
    return tuple(
        min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1)
    )


def resolve_ranks(ranks: RankSpec, mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Full rank tuple (1, r_1, ..., r_{d-1}, 1) from a user's rank spec.

    Args:
        ranks: an int is a cap applied to every bond (clamped to the bond's maximum useful rank);
            a sequence of d-1 ints (or d+1 with ones at both ends) gives each bond exactly and
            must not exceed the maximum useful ranks; None means the maximum useful ranks.
        mode_sizes: the size of each TT mode (n_k * m_k for a TT-matrix).

    Raises:
        ConfigError: for ranks < 1, the wrong count, or a rank above the bond's maximum.
    """
    limit = max_ranks(mode_sizes)
    if ranks is None:
        inner = limit
    elif isinstance(ranks, int) and not isinstance(ranks, bool):
        if ranks < 1:
            raise ConfigError(f"ranks must be >= 1, got {ranks}")
        inner = tuple(min(ranks, m) for m in limit)
    else:
        given = tuple(ranks)
        if len(given) == len(limit) + 2 and given[0] == 1 and given[-1] == 1:
            given = given[1:-1]
        if len(given) != len(limit):
            raise ConfigError(
                f"expected {len(limit)} ranks (one per bond between {len(mode_sizes)} cores), "
                f"got {len(given)}: {given}"
            )
        for k, (r, m) in enumerate(zip(given, limit, strict=True)):
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise ConfigError(f"rank {k + 1} must be an integer >= 1, got {r!r}")
            if r > m:
                raise ConfigError(
                    f"rank {k + 1} is {r}, above its maximum useful rank {m} for mode sizes "
                    f"{tuple(mode_sizes)}; valid range is 1..{m} (maxima: {limit})"
                )
        inner = given
    return (1, *inner, 1)


def check_positive_int(value: object, name: str) -> None:
    """Raise ConfigError unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# TT-SVD


def tt_svd(
    tensor: torch.Tensor, max_rank: RankSpec = None, eps: float | None = None
) -> list[torch.Tensor]:
    """Oseledets' TT-SVD: cores of a TT approximation of `tensor` by successive truncated SVDs.

    Args:
        tensor: a d-dimensional tensor (compute in float64 for tight error bounds).
        max_rank: cap on every bond rank (int) or per-bond caps (sequence of d-1 ints).
        eps: relative accuracy; when given alone, ||A - TT(A)||_F <= eps * ||A||_F is guaranteed
            (each of the d-1 SVDs drops at most eps / sqrt(d-1) * ||A||_F). With `max_rank` too,
            ranks are the smaller of both choices and the bound holds only if no cap binds.

    Returns:
        d cores, core k shaped (r_{k-1}, n_k, r_k).

    Raises:
        ConfigError: for a bad eps or max_rank.
    """
    if tensor.dim() < 1:
        raise ConfigError("tt_svd needs a tensor with at least one dimension")
    shape = tuple(tensor.shape)
    d = len(shape)
    if eps is not None and (not math.isfinite(eps) or eps < 0):
        raise ConfigError(f"eps must be a finite number >= 0, got {eps!r}")
    caps = resolve_ranks(max_rank, shape)[1:-1] if max_rank is not None else max_ranks(shape)
    delta = 0.0
    if eps and d > 1:
        delta = eps / math.sqrt(d - 1) * torch.linalg.norm(tensor).item()

    cores: list[torch.Tensor] = []
    rest = tensor
    r_prev = 1
    for k in range(d - 1):
        rest = rest.reshape(r_prev * shape[k], -1)
        u, rest = leading_subspace(rest, caps[k], delta if eps else None)
        rank = u.shape[1]
        cores.append(u.reshape(r_prev, shape[k], rank))
        r_prev = rank
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return cores


# Unfoldings whose smaller side exceeds this are too big for an exact decomposition in the
# time a user waits (a 25088 x 4096 layer's middle unfoldings are ~10^4 x 10^4): with a capped
# rank they get the randomized range finder, else a full SVD.
EXACT_SIDE = 4096


def leading_subspace(
    a: torch.Tensor, cap: int, delta: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, U_r^T a) for the r leading left singular vectors of `a`: r is the smallest rank
    whose dropped singular values have norm <= delta (None: no accuracy target), at most cap.

    One TT-SVD step. A full SVD of every unfolding made TT-SVD of a 25088 x 4096 layer take 13 s
    at rank 8 and minutes at the planner's ranks. Here: with only a cap, and a cap far below the
    unfolding's size, a randomized range finder (Halko, Martinsson & Tropp 2011: 10 extra
    columns, 4 power iterations) in float32, re-orthonormalised in `a`'s precision; otherwise the
    exact eigen-decomposition of the smaller Gram matrix (its eigenvalues are the squared
    singular values, so the eps tail is exact too), or the SVD itself for accuracy targets
    below 1e-6 or unfoldings too big for the Gram matrix. The projection U_r^T a is always
    computed in `a`'s precision, so the cores reproduce exactly what they keep.
    """
    rows, cols = a.shape
    small = min(rows, cols)
    if delta is None and cap * 4 <= small and small > 256:
        q = min(small, cap + 10)
        u, _, _ = torch.svd_lowrank(a.float(), q=q, niter=4)
        u, _ = torch.linalg.qr(u[:, :cap].to(a.dtype))
        return u, u.T @ a
    # the Gram matrix squares the singular values: those below ~1e-8 of the largest are lost
    # in float64, so a tighter accuracy target takes the SVD itself
    tight = delta is not None and delta < 1e-6 * float(torch.linalg.norm(a))
    if small > EXACT_SIDE or tight:
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        s2 = s.double() ** 2
    elif rows <= cols:
        evals, vectors = torch.linalg.eigh(a @ a.T)
        s2, u = evals.flip(0).clamp_min(0).double(), vectors.flip(1)
    else:
        evals, vectors = torch.linalg.eigh(a.T @ a)
        s2, v = evals.flip(0).clamp_min(0).double(), vectors.flip(1)
        rank = _rank(s2, cap, delta)
        u, _ = torch.linalg.qr(a @ v[:, :rank])  # spans the same leading left subspace
        return u, u.T @ a
    rank = _rank(s2, cap, delta)
    u = u[:, :rank].contiguous()
    return u, u.T @ a


def _rank(s2: torch.Tensor, cap: int, delta: float | None) -> int:
    """The smallest rank whose dropped tail of squared singular values s2 (descending) has norm
    <= delta, within [1, cap]; the cap alone when delta is None."""
    if delta is None:
        return max(1, min(cap, len(s2)))
    # tail[r] = norm of the singular values dropped when keeping r of them
    tail = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0]).sqrt()
    tail = torch.cat([tail, tail.new_zeros(1)])
    rank = next(r for r in range(1, len(s2) + 1) if tail[r] <= delta)
    return max(1, min(rank, cap))


def balance_cores(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Scale the cores to equal Frobenius norms without changing the tensor they represent.

    TT-SVD leaves every core orthonormal but the last, which carries the whole norm; SGD on such
    cores updates them at very different scales. Core k is multiplied by g / ||G_k|| with g the
    geometric mean of the norms, so the factors multiply to 1.
    """
    norms = [torch.linalg.norm(c) for c in cores]
    if any(n == 0 for n in norms):
        return list(cores)
    g = torch.exp(torch.stack([n.log() for n in norms]).mean())
    return [c * (g / n) for c, n in zip(cores, norms, strict=True)]


def tt_to_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rebuild the full tensor from TT cores shaped (r_{k-1}, n_k, r_k)."""
    full = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return full.reshape([c.shape[1] for c in cores])


def tt_params(cores_or_shapes: Sequence[torch.Tensor] | Sequence[Sequence[int]]) -> int:
    """Number of entries in a list of cores (or of core shapes)."""
    return sum(math.prod(getattr(c, "shape", c)) for c in cores_or_shapes)


# --------------------------------------------------------------------------------------------
# TT-matrices


def tt_matrix_from_dense(
    weight: torch.Tensor,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    max_rank: RankSpec = None,
    eps: float | None = None,
) -> list[torch.Tensor]:
    """TT-matrix cores of a dense (out_features, in_features) matrix, by TT-SVD.

    The (m_k, n_k) index pairs are interleaved so that core k carries one input and one output
    mode, then TT-SVD runs over the d merged modes of size n_k * m_k.

    Returns:
        cores shaped (r_{k-1}, in_modes[k], out_modes[k], r_k).
    """
    in_modes, out_modes = tuple(in_modes), tuple(out_modes)
    d = len(in_modes)
    if weight.shape != (math.prod(out_modes), math.prod(in_modes)):
        raise ConfigError(
            f"weight shape {tuple(weight.shape)} does not match out_modes {out_modes} x "
            f"in_modes {in_modes}"
        )
    w = weight.reshape(*out_modes, *in_modes)
    interleave = [i for k in range(d) for i in (d + k, k)]  # (n1, m1, n2, m2, ...)
    w = w.permute(interleave).reshape([n * m for n, m in zip(in_modes, out_modes, strict=True)])
    cores = tt_svd(w, max_rank=max_rank, eps=eps)
    return [
        c.reshape(c.shape[0], n, m, c.shape[-1])
        for c, n, m in zip(cores, in_modes, out_modes, strict=True)
    ]


def tt_matrix_to_dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rebuild the dense (out_features, in_features) matrix from TT-matrix cores.

    Written as reshape/matmul/permute only, so it exports to plain ONNX ops.
    """
    d = len(cores)
    in_modes = [c.shape[1] for c in cores]
    out_modes = [c.shape[2] for c in cores]
    full = cores[0].reshape(-1, cores[0].shape[-1])  # (n1 m1, r1)
    for core in cores[1:]:
        full = full @ core.reshape(core.shape[0], -1)  # (..., n_k m_k r_k)
        full = full.reshape(-1, core.shape[-1])
    full = full.reshape([s for k in range(d) for s in (in_modes[k], out_modes[k])])
    perm = [2 * k + 1 for k in range(d)] + [2 * k for k in range(d)]  # outs first, then ins
    return full.permute(perm).reshape(math.prod(out_modes), math.prod(in_modes))


def tt_matrix_params(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]
) -> int:
    """Core parameters of a TT-matrix: sum_k r_{k-1} n_k m_k r_k."""
    return sum(
        ranks[k] * n * m * ranks[k + 1]
        for k, (n, m) in enumerate(zip(in_modes, out_modes, strict=True))
    )


def tt_matvec_macs(
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: Sequence[int],
    batch: int = 1,
    direction: str = "ltr",
) -> int:
    """Exact multiply-adds of `tt_matvec` for a batch, contracting from one end of the train.

    Left to right, step k contracts (n_k, r_{k-1}) for every (batch, m_<k, n_>k) index:
    batch * prod(m_<k) * prod(n_>k) * r_{k-1} n_k m_k r_k. Right to left mirrors it.
    """
    n, m, r = list(in_modes), list(out_modes), list(ranks)
    total = 0
    for k in range(len(n)):
        step = r[k] * n[k] * m[k] * r[k + 1]
        if direction == "ltr":
            total += math.prod(m[:k]) * math.prod(n[k + 1 :]) * step
        elif direction == "rtl":
            total += math.prod(n[:k]) * math.prod(m[k + 1 :]) * step
        else:
            raise ConfigError(f"direction must be 'ltr' or 'rtl', got {direction!r}")
    return batch * total


def plan_direction(in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]) -> str:
    """The end of the train to start contracting from: the one with fewer multiply-adds."""
    ltr = tt_matvec_macs(in_modes, out_modes, ranks, 1, "ltr")
    rtl = tt_matvec_macs(in_modes, out_modes, ranks, 1, "rtl")
    return "ltr" if ltr <= rtl else "rtl"


def tt_matrix_reconstruction_macs(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]
) -> int:
    """Multiply-adds of `tt_matrix_to_dense` (contracting the cores left to right)."""
    total, left = 0, 1
    for k in range(1, len(in_modes)):
        left *= in_modes[k - 1] * out_modes[k - 1]
        total += left * ranks[k] * in_modes[k] * out_modes[k] * ranks[k + 1]
    return total


def tt_matvec(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    direction: str = "ltr",
) -> torch.Tensor:
    """y = x W^T for a TT-matrix W, core by core, never forming W and never transposing data.

    Only reshape and matmul, so the ONNX export is a plain op chain (no Einsum, no Transpose).
    The state is kept as (P, K, Q) where K holds the two indices the next core contracts, which
    the memory layout already keeps adjacent:
    - right to left: (B n_<k, n_k r_k, m_>k) -> core as (r_{k-1} m_k, n_k r_k) @ state;
    - left to right: (B m_<k, r_{k-1} n_k, n_>k) -> core as (m_k r_k, r_{k-1} n_k) @ state.
    Each step's output layout is the next step's input layout, so no data moves between matmuls.
    When Q is 1 the step is one plain 2-D matmul.

    Args:
        x: (..., in_features).
        cores: TT-matrix cores (r_{k-1}, n_k, m_k, r_k).
        direction: "ltr" or "rtl" (see `plan_direction`).

    Returns:
        (..., out_features).
    """
    if direction not in ("ltr", "rtl"):
        raise ConfigError(f"direction must be 'ltr' or 'rtl', got {direction!r}")
    in_modes = [c.shape[1] for c in cores]
    out_modes = [c.shape[2] for c in cores]
    lead = x.shape[:-1]
    state = x
    q = 1 if direction == "rtl" else math.prod(in_modes)
    order = range(len(cores)) if direction == "ltr" else reversed(range(len(cores)))
    for k in order:
        core = cores[k]
        r_in, n, m, r_out = core.shape
        if direction == "ltr":
            q //= n
            mat = core.permute(2, 3, 0, 1).reshape(m * r_out, r_in * n)
        else:
            mat = core.permute(0, 2, 1, 3).reshape(r_in * m, n * r_out)
        if q == 1:
            state = state.reshape(-1, mat.shape[1]) @ mat.t()  # (P, K) @ (K, out)
        else:
            state = mat @ state.reshape(-1, mat.shape[1], q)  # (out, K) @ (P, K, Q)
        if direction == "rtl":
            q *= m
    return state.reshape(*lead, math.prod(out_modes))


def plan_tt_linear(
    in_features: int,
    out_features: int,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    ranks: RankSpec = 8,
    batch: int = 1,
) -> dict[str, object]:
    """Everything a user wants to know about a TT-linear shape before building it."""
    check_positive_int(batch, "batch")
    in_modes, out_modes = resolve_matrix_modes(in_features, out_features, in_modes, out_modes)
    full_ranks = resolve_ranks(ranks, [n * m for n, m in zip(in_modes, out_modes, strict=True)])
    params = tt_matrix_params(in_modes, out_modes, full_ranks)
    direction = plan_direction(in_modes, out_modes, full_ranks)
    macs = tt_matvec_macs(in_modes, out_modes, full_ranks, batch, direction)
    dense = in_features * out_features
    return {
        "in_modes": list(in_modes),
        "out_modes": list(out_modes),
        "ranks": list(full_ranks),
        "core_params": params,
        "dense_params": dense,
        "compression": round(dense / params, 2),
        "direction": direction,
        "batch": batch,
        "tt_macs": macs,
        "dense_macs": dense * batch,
        "macs_ratio": round(dense * batch / macs, 2),
    }


def export_info(layer) -> dict:
    """What the export report and the ONNX metadata record of a TT layer: modes and ranks."""
    return {
        "in_modes": list(layer.in_modes),
        "out_modes": list(layer.out_modes),
        "ranks": list(layer.ranks),
    }


# -- contraction plans -------------------------------------------------------------------------
#
# A plan lowers y = x W^T for a TT-matrix W to ONNX: which adjacent cores are merged into one
# (offline, in-graph from the stored cores: more multiply-adds, fewer and larger GEMMs) and from
# which end the train is contracted. The export planner prices every plan with a cost model
# calibrated on the export machine (kompakt.export.cost_model) or times the best ones.

Plan = tuple[tuple[int, ...], str]  # (group sizes, direction)


def compositions(d: int) -> list[tuple[int, ...]]:
    """Every way to split d cores into runs of adjacent cores (2^(d-1) of them)."""
    if d == 0:
        return [()]
    return [(first, *rest) for first in range(1, d + 1) for rest in compositions(d - first)]


def merge_cores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two adjacent TT-matrix cores as one: (r0, n1, m1, r1) x (r1, n2, m2, r2) ->
    (r0, n1 n2, m1 m2, r2), row-major multi-indices as in the rest of this module."""
    r0, n1, m1, _ = a.shape
    _, n2, m2, r2 = b.shape
    joined = (a.reshape(r0 * n1 * m1, -1) @ b.reshape(b.shape[0], -1)).reshape(
        r0, n1, m1, n2, m2, r2
    )
    return joined.permute(0, 1, 3, 2, 4, 5).reshape(r0, n1 * n2, m1 * m2, r2)


def group_cores(cores: Sequence[torch.Tensor], groups: Sequence[int]) -> list[torch.Tensor]:
    """The cores with each run of `groups` merged (groups of 1 leave a core as it is)."""
    if sum(groups) != len(cores) or min(groups, default=1) < 1:
        raise ConfigError(f"groups {tuple(groups)} do not split {len(cores)} cores")
    merged, start = [], 0
    for size in groups:
        core = cores[start]
        for k in range(start + 1, start + size):
            core = merge_cores(core, cores[k])
        merged.append(core)
        start += size
    return merged


def grouped_train(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], groups: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """Modes and ranks of the train after `group_cores`."""
    n, m, r, start = [], [], [ranks[0]], 0
    for size in groups:
        n.append(math.prod(in_modes[start : start + size]))
        m.append(math.prod(out_modes[start : start + size]))
        start += size
        r.append(ranks[start])
    return n, m, r


def matvec_gemms(
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: Sequence[int],
    batch: int,
    direction: str,
) -> list[tuple[int, int, int, int]]:
    """The GEMMs `tt_matvec` runs, as (count, m, k, n): `count` independent (m x k)(k x n)
    products per step (the batched MatMul of a transpose-free step; 1 for a plain 2-D one)."""
    d = len(in_modes)
    steps = []
    for k in range(d) if direction == "ltr" else reversed(range(d)):
        n_k, m_k, r_in, r_out = in_modes[k], out_modes[k], ranks[k], ranks[k + 1]
        if direction == "ltr":
            lead, q, inner, outer = (
                math.prod(out_modes[:k]),
                math.prod(in_modes[k + 1 :]),
                r_in * n_k,
                m_k * r_out,
            )
        else:
            lead, q, inner, outer = (
                math.prod(in_modes[:k]),
                math.prod(out_modes[k + 1 :]),
                n_k * r_out,
                r_in * m_k,
            )
        if q == 1:
            steps.append((1, batch * lead, inner, outer))
        else:
            steps.append((batch * lead, outer, inner, q))
    return steps


def plan_name(plan: Plan) -> str:
    groups, direction = plan
    return f"factored[{'-'.join(map(str, groups))}:{direction}]"


def parse_plan(form: str) -> Plan | None:
    """'factored[2-2-2:rtl]' -> ((2, 2, 2), 'rtl'); None for any other form name."""
    if not (form.startswith("factored[") and form.endswith("]")):
        return None
    groups, _, direction = form[len("factored[") : -1].partition(":")
    return tuple(int(g) for g in groups.split("-")), direction


def merge_macs(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], groups: Sequence[int]
) -> int:
    """Multiply-adds of merging the cores (constant work: runtimes fold it once at load)."""
    total, start = 0, 0
    for size in groups:
        left = in_modes[start] * out_modes[start] * ranks[start]
        for k in range(start + 1, start + size):
            total += left * ranks[k] * in_modes[k] * out_modes[k] * ranks[k + 1]
            left *= in_modes[k] * out_modes[k]
        start += size
    return total
