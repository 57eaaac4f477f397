"""TTConv2d: Garipov's TT-convolution (thesis eq. 8-9) and the naive 4-D baseline (eq. 7)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kompakt.errors import ConfigError, ShapeError
from kompakt.layers import tt
from kompakt.layers.base import CompressedLayer
from kompakt.layers.registry import LAYERS

VARIANTS = ("tt", "naive")
FORWARD_MODES = ("auto", "factored", "separable", "dense")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 0 for v in pair):
        raise ConfigError(f"{name} must be an int >= 0 or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """CS231n: (W - F + 2P) / S + 1, with the dilated filter extent F."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@LAYERS.register("tt-conv2d")
class TTConv2d(CompressedLayer):
    """2-D convolution whose kernel is in TT format.

    variant "tt" (Garipov): K(x, y, c, s) = G0[x, y] G1[c1, s1] ... Gd[cd, sd]; stored as a
    TT-matrix with in_modes (kh*kw, c1..cd) and out_modes (1, s1..sd), so `cores[0]` is the
    spatial core (1, kh*kw, 1, r1) and cores 1..d the channel cores (r_k, c_k, s_k, r_{k+1}).
    variant "naive": K(x, y, c, s) = G1[x] G2[y] G3[c] G4[s], cores (r, n, r') over the 4-D
    kernel (kh, kw, C, S); kept as the comparison baseline of the thesis's table 1.

    Forward: "dense" rebuilds the kernel from the cores and calls conv2d; "factored" (tt variant
    only) runs the spatial core as an r1-filter depthwise-style conv on every input channel and
    then contracts the channel cores per pixel; "auto" picks the one with fewer multiply-adds
    for the current input (rebuilding wins unless the batch and ranks are tiny; see `costs`).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as nn.Conv2d.
        in_modes, out_modes: factorisations of the channels (tt variant; balanced when None).
        ranks: cap (int), exact bond ranks (sequence) or None (full rank).
        bias: learn a dense bias.
        variant: "tt" or "naive".
        forward_mode: "auto", "factored" or "dense".
    """

    dense_type = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        ranks: tt.RankSpec = 8,
        bias: bool = True,
        variant: str = "tt",
        forward_mode: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if forward_mode not in FORWARD_MODES:
            raise ConfigError(f"forward_mode must be one of {FORWARD_MODES}, got {forward_mode!r}")
        if variant == "naive" and forward_mode in ("factored", "separable"):
            raise ConfigError("the naive variant only has the 'dense' (rebuild) forward")
        if variant == "naive" and (in_modes is not None or out_modes is not None):
            raise ConfigError("the naive variant has no channel modes; drop in_modes/out_modes")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1:
            raise ConfigError(f"kernel_size must be >= 1, got {kernel_size!r}")
        self.stride = _pair(stride, "stride")
        if min(self.stride) < 1:
            raise ConfigError(f"stride must be >= 1, got {stride!r}")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.dilation) < 1:
            raise ConfigError(f"dilation must be >= 1, got {dilation!r}")
        self.variant = variant
        self.forward_mode = forward_mode
        positions = self.kernel_size[0] * self.kernel_size[1]

        if variant == "tt":
            self.in_modes, self.out_modes = tt.resolve_matrix_modes(
                in_channels, out_channels, in_modes, out_modes
            )
            if len(self.in_modes) + 1 > tt.MAX_MODES:
                raise ConfigError(
                    f"TTConv2d adds a spatial core, so at most {tt.MAX_MODES - 1} channel modes "
                    f"are allowed, got {len(self.in_modes)}"
                )
            mat_in = (positions, *self.in_modes)
            mat_out = (1, *self.out_modes)
            sizes = [n * m for n, m in zip(mat_in, mat_out, strict=True)]
            self.ranks = tt.resolve_ranks(ranks, sizes)
            shapes = [
                (self.ranks[k], n, m, self.ranks[k + 1])
                for k, (n, m) in enumerate(zip(mat_in, mat_out, strict=True))
            ]
        else:
            self.in_modes, self.out_modes = (in_channels,), (out_channels,)
            tt.check_positive_int(in_channels, "in_channels")
            tt.check_positive_int(out_channels, "out_channels")
            dims = (*self.kernel_size, in_channels, out_channels)
            self.ranks = tt.resolve_ranks(ranks, dims)
            shapes = [(self.ranks[k], n, self.ranks[k + 1]) for k, n in enumerate(dims)]
        self.cores = nn.ParameterList(nn.Parameter(torch.empty(s, **factory)) for s in shapes)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def init_std(self) -> float:
        """Target std of the rebuilt kernel: He-normal, sqrt(2 / fan_in)."""
        return math.sqrt(2.0 / (self.in_channels * self.kernel_size[0] * self.kernel_size[1]))

    def reset_parameters(self) -> None:
        """Variance-preserving for the rebuilt kernel (see TTLinear.reset_parameters)."""
        d = len(self.cores)
        core_std = (self.init_std**2 / math.prod(self.ranks[1:-1])) ** (1.0 / (2 * d))
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, core_std)
            if self.bias is not None:
                fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
                self.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    # -- kernel and forward ------------------------------------------------------------------

    def kernel(self) -> torch.Tensor:
        """The rebuilt (out_channels, in_channels, kh, kw) kernel."""
        kh, kw = self.kernel_size
        c, s = self.in_channels, self.out_channels
        if self.variant == "tt":
            w = tt.tt_matrix_to_dense(list(self.cores))  # (S, P * C), P most significant
            return w.reshape(s, kh * kw, c).transpose(1, 2).reshape(s, c, kh, kw)
        full = tt.tt_to_full(list(self.cores))  # (kh, kw, C, S)
        return full.permute(3, 2, 0, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)

    def _forward_factored(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        r1 = self.ranks[1]
        spatial = self.cores[0].reshape(kh * kw, r1).t().reshape(r1, 1, kh, kw)
        h, w = x.shape[-2], x.shape[-1]
        z = F.conv2d(
            x.reshape(-1, 1, h, w), spatial, None, self.stride, self.padding, self.dilation
        )  # (B*C, r1, H', W')
        ho, wo = z.shape[-2], z.shape[-1]
        z = z.reshape(-1, self.in_channels, r1, ho, wo).permute(0, 3, 4, 2, 1)  # (B, H', W', r1, C)
        z = z.reshape(-1, r1 * self.in_channels)
        first = self.cores[1]
        # fold r1 into the first channel mode: core (r1, c1, s1, r2) -> (1, r1*c1, s1, r2)
        chain = [first.reshape(1, r1 * first.shape[1], first.shape[2], first.shape[3])]
        chain += list(self.cores[2:])
        ranks = (1, *self.ranks[2:])
        in_modes = (r1 * self.in_modes[0], *self.in_modes[1:])
        direction = tt.plan_direction(in_modes, self.out_modes, ranks)
        y = tt.tt_matvec(z, chain, direction)  # (B*H'*W', S)
        y = y.reshape(-1, ho, wo, self.out_channels).permute(0, 3, 1, 2)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def channel_matrix(self) -> torch.Tensor:
        """The channel cores contracted: (S, r1, C), the kernel being
        K[s, c, y, x] = sum_a spatial[y, x, a] * H[s, a, c] (tt variant)."""
        r1 = self.ranks[1]
        first = self.cores[1]
        chain = [first.reshape(1, r1 * first.shape[1], first.shape[2], first.shape[3])]
        chain += list(self.cores[2:])
        return tt.tt_matrix_to_dense(chain).reshape(self.out_channels, r1, self.in_channels)

    def _forward_separable(self, x: torch.Tensor) -> torch.Tensor:
        """Two standard convolutions: each input channel through the r1 spatial filters (a
        grouped conv, C -> C*r1 channels), then a 1x1 conv with the channel matrix. Cheaper
        than the dense conv when r1 * (kh*kw + S) < kh*kw * S."""
        kh, kw = self.kernel_size
        r1, c = self.ranks[1], self.in_channels
        spatial = self.cores[0].reshape(kh * kw, r1).t().reshape(r1, 1, kh, kw).repeat(c, 1, 1, 1)
        z = F.conv2d(x, spatial, None, self.stride, self.padding, self.dilation, groups=c)
        mix = self.channel_matrix().permute(0, 2, 1).reshape(self.out_channels, c * r1, 1, 1)
        return F.conv2d(z, mix, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"TTConv2d expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        mode = self.forward_mode
        if mode == "auto":
            mode = self.choose_forward(x.shape[0], x.shape[2], x.shape[3])
        if mode == "factored":
            return self._forward_factored(x)
        if mode == "separable":
            return self._forward_separable(x)
        return self._conv(x, self.kernel())

    # -- cost model --------------------------------------------------------------------------

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            conv_output_size(size, *args)
            for size, args in zip(
                (height, width),
                zip(self.kernel_size, self.stride, self.padding, self.dilation, strict=True),
                strict=True,
            )
        )

    def costs(self, batch: int, height: int, width: int) -> dict[str, int]:
        """Exact multiply-adds of each forward mode for one input size (bias adds excluded)."""
        ho, wo = self.output_hw(height, width)
        positions = self.kernel_size[0] * self.kernel_size[1]
        conv = batch * ho * wo * self.out_channels * self.in_channels * positions
        if self.variant == "tt":
            rebuild = tt.tt_matrix_reconstruction_macs(
                (positions, *self.in_modes), (1, *self.out_modes), self.ranks
            )
        else:
            rebuild, left = 0, 1
            dims = [c.shape[1] for c in self.cores]
            for k in range(1, len(dims)):
                left *= dims[k - 1]
                rebuild += left * self.ranks[k] * dims[k] * self.ranks[k + 1]
        costs = {"dense": rebuild + conv}
        if self.variant == "tt":
            r1 = self.ranks[1]
            spatial = batch * self.in_channels * ho * wo * r1 * positions
            in_modes = (r1 * self.in_modes[0], *self.in_modes[1:])
            ranks = (1, *self.ranks[2:])
            chain = min(
                tt.tt_matvec_macs(in_modes, self.out_modes, ranks, batch * ho * wo, d)
                for d in ("ltr", "rtl")
            )
            costs["factored"] = spatial + chain
        return costs

    def choose_forward(self, batch: int, height: int, width: int) -> str:
        """The forward mode with fewer multiply-adds for this input size."""
        if not all(isinstance(v, int) for v in (batch, height, width)):
            return "dense"  # symbolic shapes (export): rebuilding does not depend on them
        costs = self.costs(batch, height, width)
        return min(costs, key=costs.__getitem__)

    def forward_macs(self, batch: int, height: int, width: int) -> int:
        """Multiply-adds of one forward pass in the mode `auto` would choose (plus bias adds)."""
        mode = self.forward_mode
        if mode == "auto":
            mode = self.choose_forward(batch, height, width)
        ho, wo = self.output_hw(height, width)
        bias = batch * ho * wo * self.out_channels if self.bias is not None else 0
        return self.costs(batch, height, width)[mode] + bias

    # -- conversions -------------------------------------------------------------------------

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        ranks: tt.RankSpec = None,
        eps: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        variant: str = "tt",
        forward_mode: str = "auto",
    ) -> TTConv2d:
        """A TTConv2d initialised from a trained `nn.Conv2d` by TT-SVD of its kernel."""
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"from_dense expects an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "from_dense supports nn.Conv2d with groups=1, zero padding and integer padding; "
                f"got groups={conv.groups}, padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        weight = conv.weight.detach()
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            in_modes=in_modes,
            out_modes=out_modes,
            ranks=1,  # placeholder: replaced by the TT-SVD cores below
            bias=conv.bias is not None,
            variant=variant,
            forward_mode=forward_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        kh, kw = layer.kernel_size
        s, c = conv.out_channels, conv.in_channels
        w64 = weight.double()
        if variant == "tt":
            matrix = w64.reshape(s, c, kh * kw).transpose(1, 2).reshape(s, kh * kw * c)
            cores = tt.tt_matrix_from_dense(
                matrix, (kh * kw, *layer.in_modes), (1, *layer.out_modes), ranks, eps
            )
        else:
            cores = tt.tt_svd(w64.permute(2, 3, 1, 0), max_rank=ranks, eps=eps)
        layer.cores = nn.ParameterList(
            nn.Parameter(core.to(device=weight.device, dtype=weight.dtype).contiguous())
            for core in tt.balance_cores(cores)
        )
        layer.ranks = (1, *(core.shape[-1] for core in cores))
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias.detach())
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent `nn.Conv2d` (same dtype and device)."""
        ref = self.cores[0]
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.kernel())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    # -- accounting --------------------------------------------------------------------------

    def core_params(self) -> int:
        return tt.tt_params(list(self.cores))

    def dense_params(self) -> int:
        return self.in_channels * self.out_channels * self.kernel_size[0] * self.kernel_size[1]

    def compression_ratio(self) -> float:
        """Dense kernel entries per core parameter (biases excluded on both sides)."""
        return self.dense_params() / self.core_params()

    # -- the CompressedLayer contract ---------------------------------------------------------

    def init_args(self) -> dict:
        args = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "ranks": list(self.ranks[1:-1]),
            "bias": self.bias is not None,
            "variant": self.variant,
            "forward_mode": self.forward_mode,
        }
        if self.variant == "tt":
            args.update(in_modes=list(self.in_modes), out_modes=list(self.out_modes))
        return args

    def macs(self, input_shape: tuple[int, ...]) -> int:
        batch, _, height, width = input_shape
        return self.forward_macs(batch, height, width)

    def export_forms(self) -> tuple[str, ...]:
        # factored: the kernel is rebuilt in-graph from the cores and fed to one Conv (the file
        # keeps only the cores); chain: spatial conv + per-pixel core chain; separable: grouped
        # spatial conv + 1x1 conv (`_forward_separable`), the 1x1 kernel rebuilt in-graph;
        # lowered: the same two convs with both kernels stored (`lowered`), which INT8
        # quantises; dense: a plain Conv
        if self.variant == "tt":
            return ("factored", "dense", "chain", "separable", "lowered")
        return ("factored", "dense")

    def export_ops(self, input_shape: tuple[int, ...], form: str) -> list[tuple]:
        b, c, h, w = input_shape
        ho, wo = self.output_hw(h, w)
        kh, kw = self.kernel_size
        s = self.out_channels
        if form in ("factored", "dense"):
            return [("conv", b, c, h, w, s, 1, kh, kw, ho, wo)]
        r1 = self.ranks[1]
        if form in ("separable", "lowered"):
            return [
                ("conv", b, c, h, w, c * r1, c, kh, kw, ho, wo),
                ("conv", b, c * r1, ho, wo, s, 1, 1, 1, ho, wo),
            ]
        in_modes = (r1 * self.in_modes[0], *self.in_modes[1:])
        ranks = (1, *self.ranks[2:])
        direction = tt.plan_direction(in_modes, self.out_modes, ranks)
        gemms = tt.matvec_gemms(in_modes, self.out_modes, ranks, b * ho * wo, direction)
        return [
            ("conv", b * c, 1, h, w, r1, 1, kh, kw, ho, wo),
            ("copy", b * c * r1 * ho * wo),
            *(("gemm", *g) for g in gemms),
            ("copy", b * s * ho * wo),
        ]

    def export_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        batch, _, height, width = input_shape
        ho, wo = self.output_hw(height, width)
        conv = batch * ho * wo * self.dense_params()
        # runtimes fold the kernel rebuild once at load, so "factored" costs the Conv per run
        costs = {"factored": conv, "dense": conv}
        if self.variant == "tt":
            costs["chain"] = self.costs(batch, height, width)["factored"]
            r1, positions = self.ranks[1], self.kernel_size[0] * self.kernel_size[1]
            costs["separable"] = (
                batch * ho * wo * self.in_channels * r1 * (positions + self.out_channels)
            )
            costs["lowered"] = costs["separable"]
        return costs

    @torch.no_grad()
    def lowered(self) -> nn.Sequential:
        """The separable form as two plain convolutions with stored kernels: a grouped conv
        (C -> C*r1, each input channel through the r1 spatial filters) and a 1x1 conv with the
        channel matrix. Equal to this layer (same outputs); ONNX Runtime's INT8 quantiser treats
        both as ordinary convs, which the in-graph rebuilt kernels of the other forms prevent."""
        if self.variant != "tt":
            raise ValueError("only the tt variant has a separable (lowered) form")
        kh, kw = self.kernel_size
        r1, c, s = self.ranks[1], self.in_channels, self.out_channels
        weight = self.cores[0]
        spatial = nn.Conv2d(
            c,
            c * r1,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            groups=c,
            bias=False,
            device=weight.device,
            dtype=weight.dtype,
        )
        spatial.weight.copy_(
            self.cores[0].reshape(kh * kw, r1).t().reshape(r1, 1, kh, kw).repeat(c, 1, 1, 1)
        )
        mix = nn.Conv2d(
            c * r1, s, 1, bias=self.bias is not None, device=weight.device, dtype=weight.dtype
        )
        mix.weight.copy_(self.channel_matrix().permute(0, 2, 1).reshape(s, c * r1, 1, 1))
        if self.bias is not None:
            mix.bias.copy_(self.bias)
        lowered = nn.Sequential(spatial, mix)
        lowered.train(self.training)
        return lowered

    def export_as(self, form: str) -> nn.Module:
        if form == "dense":
            return self.to_dense()
        if form == "lowered" and form in self.export_forms():
            return self.lowered()
        if form not in self.export_forms():
            raise ValueError(f"TTConv2d has no export form {form!r}")
        self.forward_mode = {"chain": "factored", "separable": "separable"}.get(form, "dense")
        return self

    def export_info(self) -> dict:
        return tt.export_info(self)

    def export_constants(self) -> tuple[int, int | None]:
        rebuilt = None
        if self.forward_mode == "dense":
            rebuilt = self.dense_params()
        elif self.forward_mode == "separable":  # the repeated spatial filters, the 1x1 kernel
            kh, kw = self.kernel_size
            rebuilt = self.in_channels * self.ranks[1] * min(kh * kw, self.out_channels)
        return max(c.numel() for c in self.cores), rebuilt

    def extra_repr(self) -> str:
        modes = (
            f"in_modes={self.in_modes}, out_modes={self.out_modes}, "
            if self.variant == "tt"
            else ""
        )
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, variant={self.variant}, {modes}"
            f"ranks={self.ranks}, forward={self.forward_mode}, "
            f"compression={self.compression_ratio():.1f}x"
        )
