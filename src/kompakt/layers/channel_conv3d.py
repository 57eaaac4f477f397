"""ChannelConv3d: a Conv3d over the channel axis replacing a Conv2d (Kondaurova &
Semenov, section 2.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kompakt.errors import ConfigError, ShapeError
from kompakt.layers.base import CompressedLayer
from kompakt.layers.registry import LAYERS
from kompakt.layers.tt import check_positive_int
from kompakt.layers.tt_conv import _pair


@LAYERS.register("channel-conv3d")
class ChannelConv3d(CompressedLayer):
    """The C input maps stacked on a depth axis, convolved by s filters of h x v x u.

    With unit depth stride each filter gives C - u + 1 maps, so out_channels = (C - u + 1) * s
    and s = out_channels / (C - u + 1) must be a whole number. Output channel f * (C-u+1) + j
    is filter f at depth offset j.

    Parameters: (h v u + 1) s, against (h v C + 1) D for the Conv2d it replaces (the seed writes
    the 2-D count per output map; the true count multiplies by C).

    Args:
        in_channels: C.
        out_channels: D.
        kernel_size: (h, v), the spatial kernel.
        depth: u, the kernel's extent along the channel axis (1 <= u <= C).
        stride, padding: spatial only (the depth axis is never padded or strided).
    """

    dense_type = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        depth: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(depth, "depth")
        if depth > in_channels:
            raise ConfigError(f"depth must be in 1..in_channels={in_channels}, got {depth}")
        positions = in_channels - depth + 1
        if out_channels % positions:
            valid = [
                u for u in range(1, in_channels + 1) if out_channels % (in_channels - u + 1) == 0
            ]
            raise ConfigError(
                f"out_channels={out_channels} is not a multiple of in_channels - depth + 1 = "
                f"{positions}; depths that work for {in_channels} -> {out_channels}: "
                f"{valid or 'none'}"
            )
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ConfigError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
        self.filters = out_channels // positions
        factory = {"device": device, "dtype": dtype}
        shape = (self.filters, 1, depth, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(self.filters, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.depth * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            if self.bias is not None:
                self.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"ChannelConv3d expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        z = F.conv3d(
            x.unsqueeze(1),  # (N, 1, C, H, W): channels become depth
            self.weight,
            self.bias,
            stride=(1, *self.stride),
            padding=(0, *self.padding),
        )  # (N, s, C - u + 1, H', W')
        return z.reshape(-1, self.out_channels, z.shape[3], z.shape[4])

    def params_formula(self) -> int:
        """(h v u + 1) s, the seed's count (bias included)."""
        h, v = self.kernel_size
        return (h * v * self.depth + (1 if self.bias is not None else 0)) * self.filters

    def init_args(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "depth": self.depth,
            "stride": list(self.stride),
            "padding": list(self.padding),
            "bias": self.bias is not None,
        }

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Each output map is one filter over u channels of h x v positions."""
        batch, _, height, width = input_shape
        ho, wo = (
            (size + 2 * p - k) // s + 1
            for size, k, s, p in zip(
                (height, width), self.kernel_size, self.stride, self.padding, strict=True
            )
        )
        h, v = self.kernel_size
        return batch * self.out_channels * ho * wo * self.depth * h * v

    def core_params(self) -> int:
        return self.params_formula()

    def dense_params(self) -> int:
        """(h v C + 1) D: the Conv2d with the same input and output channels."""
        h, v = self.kernel_size
        return (h * v * self.in_channels + (1 if self.bias is not None else 0)) * self.out_channels

    def compression_ratio(self) -> float:
        return self.dense_params() / self.params_formula()

    def to_dense(self) -> nn.Conv2d:
        """The equivalent (banded, mostly zero) `nn.Conv2d`."""
        positions = self.in_channels - self.depth + 1
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.zero_()
            for f in range(self.filters):
                for j in range(positions):
                    conv.weight[f * positions + j, j : j + self.depth] = self.weight[f, 0]
            if self.bias is not None:
                conv.bias.copy_(self.bias.repeat_interleave(positions))
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"depth={self.depth}, filters={self.filters}, stride={self.stride}, "
            f"padding={self.padding}, compression={self.compression_ratio():.1f}x"
        )
