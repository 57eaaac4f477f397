"""TTLinear: a fully-connected layer whose weight is a TT-matrix (Novikov et al. 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kompakt.errors import ConfigError, ShapeError
from kompakt.layers import tt
from kompakt.layers.base import CompressedLayer
from kompakt.layers.registry import LAYERS


@LAYERS.register("tt-linear")
class TTLinear(CompressedLayer):
    """Linear layer y = W x + b with W stored as TT-matrix cores; W is never materialised.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        in_modes: factorisation of in_features. When both mode lists are None, balanced
            factorisations are chosen and ordered for the fewest multiply-adds.
        out_modes: factorisation of out_features, as many modes as in_modes.
        ranks: int cap on every bond rank (clamped to the maximum useful rank), or exact per-bond
            ranks (d-1 ints), or None for full rank.
        bias: whether to learn an additive bias (kept dense).

    Shapes:
        input (..., in_features) -> output (..., out_features).
    """

    dense_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        ranks: tt.RankSpec = 8,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.in_modes, self.out_modes = tt.resolve_matrix_modes(
            in_features, out_features, in_modes, out_modes
        )
        if in_modes is None and out_modes is None:
            self.in_modes, self.out_modes = tt.order_modes_for_speed(
                self.in_modes, self.out_modes, ranks
            )
        sizes = [n * m for n, m in zip(self.in_modes, self.out_modes, strict=True)]
        self.ranks = tt.resolve_ranks(ranks, sizes)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], n, m, self.ranks[k + 1], **factory))
            for k, (n, m) in enumerate(zip(self.in_modes, self.out_modes, strict=True))
        )
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.direction = tt.plan_direction(self.in_modes, self.out_modes, self.ranks)
        self.plan: tt.Plan | None = None  # an export plan (merged cores, direction); see tt.py
        self.reset_parameters()

    @property
    def init_std(self) -> float:
        """Target std of the reconstructed weight: He-normal, sqrt(2 / in_features)."""
        return math.sqrt(2.0 / self.in_features)

    def reset_parameters(self) -> None:
        """Initialise so that the *reconstructed* W has std `init_std`.

        An entry of W is a sum over prod(r_1..r_{d-1}) rank paths of products of d independent
        core entries, so var(W) = prod(r) * s^(2d) for cores of std s.
        """
        d = len(self.cores)
        paths = math.prod(self.ranks[1:-1])
        core_std = (self.init_std**2 / paths) ** (1.0 / (2 * d))
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, core_std)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"TTLinear expected input (..., {self.in_features}), got {tuple(x.shape)}"
            )
        if self.plan is None:
            y = tt.tt_matvec(x, list(self.cores), self.direction)
        else:
            groups, direction = self.plan
            y = tt.tt_matvec(x, tt.group_cores(list(self.cores), groups), direction)
        return y if self.bias is None else y + self.bias

    # -- conversions -------------------------------------------------------------------------

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        ranks: tt.RankSpec = None,
        eps: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
    ) -> TTLinear:
        """A TTLinear initialised from a trained `nn.Linear` by TT-SVD.

        Args:
            linear: the dense layer.
            ranks: rank cap(s); None with eps None keeps full rank (exact).
            eps: relative Frobenius error bound of the TT-SVD.
        """
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        layer = cls(
            linear.in_features,
            linear.out_features,
            in_modes,
            out_modes,
            ranks=1,  # placeholder: the TT-SVD cores replace these without a full-rank alloc
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        cores = tt.tt_matrix_from_dense(
            weight.double(), layer.in_modes, layer.out_modes, max_rank=ranks, eps=eps
        )
        layer._set_cores(tt.balance_cores(cores))
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias.detach())
        return layer

    def _set_cores(self, cores: Sequence[torch.Tensor]) -> None:
        ref = self.cores[0]
        self.cores = nn.ParameterList(
            nn.Parameter(c.to(device=ref.device, dtype=ref.dtype).contiguous()) for c in cores
        )
        self.ranks = (1, *(c.shape[-1] for c in cores))
        self.direction = tt.plan_direction(self.in_modes, self.out_modes, self.ranks)

    def weight_dense(self) -> torch.Tensor:
        """The reconstructed (out_features, in_features) weight."""
        return tt.tt_matrix_to_dense(list(self.cores))

    def to_dense(self) -> nn.Linear:
        """The equivalent `nn.Linear` (same dtype and device)."""
        ref = self.cores[0]
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # -- accounting --------------------------------------------------------------------------

    def core_params(self) -> int:
        return tt.tt_matrix_params(self.in_modes, self.out_modes, self.ranks)

    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def compression_ratio(self) -> float:
        """Dense weight entries per core parameter (biases excluded on both sides)."""
        return self.dense_params() / self.core_params()

    def forward_macs(self, batch_size: int = 1) -> int:
        """Multiply-adds of one forward pass (the chosen contraction plus the bias adds)."""
        macs = tt.tt_matvec_macs(
            self.in_modes, self.out_modes, self.ranks, batch_size, self.direction
        )
        return macs + (batch_size * self.out_features if self.bias is not None else 0)

    # -- the CompressedLayer contract ---------------------------------------------------------

    def init_args(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_modes": list(self.in_modes),
            "out_modes": list(self.out_modes),
            "ranks": list(self.ranks[1:-1]),
            "bias": self.bias is not None,
        }

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return self.forward_macs(math.prod(input_shape[:-1]))

    def plans(self) -> list[tt.Plan]:
        """Every lowering of the chain: runs of merged cores x contraction direction."""
        d = len(self.cores)
        directions = {1: ("ltr",)}  # one merged core is one GEMM either way
        return [
            (g, dr) for g in tt.compositions(d) for dr in directions.get(len(g), ("ltr", "rtl"))
        ]

    def export_forms(self) -> tuple[str, ...]:
        # factored: core by core, direction by multiply-adds; factored[...]: a contraction plan
        # (see tt.py; factored[d:ltr] rebuilds the whole weight at load: dense speed, small
        # file); dense: the materialised weight stored in the file. Ties go to the first
        # listed, so the smaller file comes first (cores are larger than W at full rank)
        plans = tuple(tt.plan_name(p) for p in self.plans())
        if self.core_params() < self.dense_params():
            return ("factored", *plans, "dense")
        return ("factored", "dense", *plans)

    def _train(self, form: str) -> tuple[list[int], list[int], list[int], str]:
        plan = tt.parse_plan(form)
        if plan is None:
            return list(self.in_modes), list(self.out_modes), list(self.ranks), self.direction
        return (*tt.grouped_train(self.in_modes, self.out_modes, self.ranks, plan[0]), plan[1])

    def export_ops(self, input_shape: tuple[int, ...], form: str) -> list[tuple]:
        rows = math.prod(input_shape[:-1])
        if form == "dense":
            return [("gemm", 1, rows, self.in_features, self.out_features)]
        n, m, r, direction = self._train(form)
        return [("gemm", *g) for g in tt.matvec_gemms(n, m, r, rows, direction)]

    def export_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        rows = math.prod(input_shape[:-1])
        bias = rows * self.out_features if self.bias is not None else 0
        costs = {"dense": rows * self.dense_params() + bias}
        for form in self.export_forms():
            if form != "dense":
                n, m, r, direction = self._train(form)
                costs[form] = tt.tt_matvec_macs(n, m, r, rows, direction) + bias
        return costs

    def export_as(self, form: str) -> nn.Module:
        if form == "dense":
            return self.to_dense()
        if form not in self.export_forms():
            raise ValueError(f"TTLinear has no export form {form!r}")
        self.plan = tt.parse_plan(form)
        return self

    def export_info(self) -> dict:
        info = tt.export_info(self)
        if self.plan is not None:
            info["plan"] = tt.plan_name(self.plan)
        return info

    def export_constants(self) -> tuple[int, int | None]:
        merged = None
        if self.plan is not None:  # merged cores are rebuilt at load, not stored
            n, m, r = tt.grouped_train(self.in_modes, self.out_modes, self.ranks, self.plan[0])
            sizes = [r[k] * n[k] * m[k] * r[k + 1] for k, g in enumerate(self.plan[0]) if g > 1]
            merged = min(sizes, default=None)
        return max(c.numel() for c in self.cores), merged

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.out_features}, in_modes={self.in_modes}, "
            f"out_modes={self.out_modes}, ranks={self.ranks}, direction={self.direction}, "
            f"bias={self.bias is not None}, compression={self.compression_ratio():.1f}x"
        )
