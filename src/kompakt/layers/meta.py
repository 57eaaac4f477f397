"""Meta layers and grouped fully-connected heads (the Meta-layer paper by Kondaurova, Semenov)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kompakt.errors import ConfigError, ShapeError
from kompakt.layers.base import CompressedLayer
from kompakt.layers.registry import LAYERS
from kompakt.layers.tt import check_positive_int


@LAYERS.register("meta")
class Meta(CompressedLayer):
    """Meta(N, M): output group m = sum_n w[n, m] * input group n.

    One scalar weight per (input group, output group) edge: every weight inside a group is tied.
    Groups are stacked on the last axis: input (..., n_in) -> output (..., n_out).
    Parameters: n_in * n_out, no bias.
    """

    dense_type = nn.Linear

    def __init__(
        self,
        n_in: int,
        n_out: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(n_in, "n_in")
        check_positive_int(n_out, "n_out")
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.empty(n_in, n_out, device=device, dtype=dtype))
        self.reset_parameters()

    def init_args(self) -> dict:
        return {"n_in": self.n_in, "n_out": self.n_out}

    def to_dense(self) -> nn.Linear:
        """The same map as an `nn.Linear` over the group axis (no bias)."""
        linear = nn.Linear(
            self.n_in, self.n_out, bias=False, device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight.t())
        return linear

    def dense_params(self) -> int:
        return self.n_in * self.n_out

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Each of the n_out output columns sums n_in weighted inputs, per row."""
        return math.prod(input_shape[:-1]) * self.n_in * self.n_out

    def reset_parameters(self) -> None:
        # Start as an averaging of the groups plus noise, so a fresh head passes signal through.
        with torch.no_grad():
            self.weight.normal_(1.0 / self.n_in, 1.0 / math.sqrt(self.n_in * self.n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_in:
            raise ShapeError(f"Meta expected input (..., {self.n_in}), got {tuple(x.shape)}")
        return x @ self.weight  # (..., n_in) @ (n_in, n_out)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, params={self.n_in * self.n_out}"


@LAYERS.register("grouped-linear")
class GroupedLinear(CompressedLayer):
    """G independent linears over contiguous slices of the features, as one batched matmul.

    Group g maps features [g*K/G, (g+1)*K/G) to outputs [g*L, (g+1)*L), L = out_features / G.
    Input (..., in_features) -> output (..., out_features).
    """

    dense_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for value, name in ((in_features, "in_features"), (out_features, "out_features")):
            check_positive_int(value, name)
        check_positive_int(groups, "groups")
        for features, name in ((in_features, "in_features"), (out_features, "out_features")):
            if features % groups:
                raise ConfigError(
                    f"{name}={features} is not divisible by groups={groups}; pick groups among "
                    f"the divisors of {features}"
                )
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.group_in, self.group_out = in_features // groups, out_features // groups
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(groups, self.group_in, self.group_out, **factory))
        self.bias = nn.Parameter(torch.empty(groups, self.group_out, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.group_in)  # nn.Linear's default, per group
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"GroupedLinear expected input (..., {self.in_features}), got {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        h = x.reshape(-1, self.groups, self.group_in).transpose(0, 1)  # (G, B, K/G)
        h = h @ self.weight  # (G, B, L): one batched matmul over the groups
        h = h.transpose(0, 1)  # (B, G, L)
        if self.bias is not None:
            h = h + self.bias
        return h.reshape(*lead, self.out_features)

    def init_args(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "groups": self.groups,
            "bias": self.bias is not None,
        }

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return math.prod(input_shape[:-1]) * self.weight.numel()

    def dense_params(self) -> int:
        return self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0
        )

    def to_dense(self) -> nn.Linear:
        """The equivalent block-diagonal `nn.Linear`."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.zero_()
            for g in range(self.groups):
                rows = slice(g * self.group_out, (g + 1) * self.group_out)
                cols = slice(g * self.group_in, (g + 1) * self.group_in)
                linear.weight[rows, cols] = self.weight[g].t()
            if self.bias is not None:
                linear.bias.copy_(self.bias.reshape(-1))
        return linear

    def compression_ratio(self) -> float:
        return self.dense_params() / sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.out_features}, groups={self.groups}, "
            f"bias={self.bias is not None}, compression={self.compression_ratio():.1f}x"
        )


@LAYERS.register("meta-head")
class MetaHead(CompressedLayer):
    """The seed's replacement for a wide FC layer: G small FCs (-> Dropout) -> Meta(G, M).

    The K inputs are split into G groups; group g gets its own FC with L = out_features / M
    outputs; Meta(G, M) mixes the G group outputs into M groups of L: out = M * L features.
    Parameters: K * L + G * L (biases) + G * M, against K * out_features + out_features dense.

    Args:
        in_features: K.
        out_features: M * L.
        groups: G (must divide in_features).
        meta_out: M (default G; must divide out_features).
        dropout: dropout between the group FCs and Meta (the seed's "FC -> Dropout").
    """

    dense_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: int,
        meta_out: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(out_features, "out_features")
        check_positive_int(groups, "groups")
        meta_out = groups if meta_out is None else meta_out
        check_positive_int(meta_out, "meta_out")
        if out_features % meta_out:
            raise ConfigError(
                f"out_features={out_features} is not divisible by meta_out={meta_out}; "
                f"pick meta_out among the divisors of {out_features}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = in_features, out_features
        self.groups, self.meta_out = groups, meta_out
        self.group_out = out_features // meta_out
        factory = {"device": device, "dtype": dtype}
        self.grouped = GroupedLinear(in_features, groups * self.group_out, groups, bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.meta = Meta(groups, meta_out, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = self.dropout(self.grouped(x))
        h = h.reshape(-1, self.groups, self.group_out).transpose(1, 2)  # (B, L, G)
        h = self.meta(h)  # (B, L, M)
        return h.transpose(1, 2).reshape(*lead, self.out_features)  # groups of L, group-major

    def to_dense(self) -> nn.Linear:
        """The equivalent `nn.Linear` (the head is linear: dropout is the identity in eval)."""
        ref = self.meta.weight
        with torch.no_grad():
            eye = torch.eye(self.in_features, device=ref.device, dtype=ref.dtype)
            zero = torch.zeros(1, self.in_features, device=ref.device, dtype=ref.dtype)
            was_training = self.training
            self.eval()
            offset = self(zero)[0]
            weight = (self(eye) - offset).t()
            self.train(was_training)
            linear = nn.Linear(
                self.in_features, self.out_features, device=ref.device, dtype=ref.dtype
            )
            linear.weight.copy_(weight)
            linear.bias.copy_(offset)
        return linear

    def init_args(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "groups": self.groups,
            "meta_out": self.meta_out,
            "dropout": self.dropout.p,
            "bias": self.grouped.bias is not None,
        }

    def macs(self, input_shape: tuple[int, ...]) -> int:
        rows = math.prod(input_shape[:-1])
        return rows * (self.grouped.weight.numel() + self.group_out * self.groups * self.meta_out)

    def dense_params(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def compression_ratio(self) -> float:
        return self.dense_params() / sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.out_features}, groups={self.groups}, "
            f"meta_out={self.meta_out}, compression={self.compression_ratio():.1f}x"
        )
