"""`CompressedLayer`: the contract every compressed layer keeps, so surgery, checkpoints, the
exporter, fc-to-conv and inspect loop over one interface instead of `isinstance` chains.

A new layer = its file (a subclass registered with `@LAYERS.register`) + its test entry.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod

from torch import nn


def conv_output_hw(conv: nn.Conv2d | nn.Module, height: int, width: int) -> tuple[int, int]:
    """Output (H, W) of a Conv2d-like module with kernel_size/stride/padding/dilation pairs."""
    out = []
    for size, k, s, p, d in zip(
        (height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


def dense_macs(
    dense: type[nn.Module],
    weight_params: int,
    input_shape: tuple[int, ...],
    layer: nn.Module | None = None,
) -> int:
    """Multiply-adds of the dense twin (Linear: rows x weight; Conv2d: output pixels x weight)."""
    if dense is nn.Conv2d and layer is not None and len(input_shape) == 4:
        ho, wo = conv_output_hw(layer, input_shape[2], input_shape[3])
        return input_shape[0] * ho * wo * weight_params // max(1, getattr(layer, "groups", 1))
    return math.prod(input_shape[:-1]) * weight_params


class CompressedLayer(nn.Module, metaclass=ABCMeta):
    """Base of every compressed layer.

    Subclasses implement `init_args`, `dense_params`, `macs` and `to_dense` (a class missing one
    cannot be instantiated); those that can start from a trained layer add a `from_dense`
    classmethod (TTLinear, TTConv2d). Export forms default to the layer as
    written ("factored"); layers that can also leave PyTorch as their dense twin list "dense"
    (and any other lowering) in `export_forms` and price them in `export_costs`.
    """

    dense_type: type[nn.Module] | None = None  # nn.Linear / nn.Conv2d: what to_dense returns

    # -- the contract ------------------------------------------------------------------------

    @abstractmethod
    def to_dense(self) -> nn.Module:
        """The exact dense twin (an instance of `dense_type`)."""

    @abstractmethod
    def init_args(self) -> dict:
        """Constructor keyword arguments that rebuild this layer (JSON-able; no weights)."""

    @abstractmethod
    def dense_params(self) -> int:
        """Weight entries of the dense twin (biases excluded)."""

    @abstractmethod
    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Exact multiply-adds of one forward pass on an input of `input_shape` (batch first)."""

    # -- shared behaviour ----------------------------------------------------------------------

    def core_params(self) -> int:
        """Parameters that replace the dense weight (biases excluded)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.endswith("bias"))

    def compression_ratio(self) -> float:
        """Dense weight entries per parameter of this layer (biases excluded on both sides)."""
        return self.dense_params() / max(1, self.core_params())

    def export_forms(self) -> tuple[str, ...]:
        """The ways this layer can appear in an exported graph; the first wins cost ties."""
        return ("factored",)

    def export_costs(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Multiply-adds per export form for an input of `input_shape` (used by tt_mode=auto)."""
        return {"factored": self.macs(input_shape)}

    def export_ops(self, input_shape: tuple[int, ...], form: str) -> list[tuple] | None:
        """The heavy ops `form` runs, for the export cost model calibrated on the machine
        (kompakt.export.cost_model): ("gemm", count, m, k, n) = `count` (m x k)(k x n)
        products; ("conv", n, c, h, w, s, groups, kh, kw, ho, wo); ("copy", elements) = a
        Transpose. None: not described (the planner then goes by `export_costs`)."""
        return None

    def export_as(self, form: str) -> nn.Module:
        """The module to put in the graph for `form` ("dense": the dense twin)."""
        if form not in self.export_forms():
            raise ValueError(f"{type(self).__name__} has no export form {form!r}")
        return self.to_dense() if form == "dense" else self

    def export_info(self) -> dict:
        """Extra facts for the export report and the ONNX metadata (modes, ranks...)."""
        return {}

    def export_constants(self) -> tuple[int, int | None]:
        """(largest parameter tensor the exporter may constant-fold, size of a rebuilt weight it
        must not fold into the file, or None)."""
        return max((p.numel() for p in self.parameters()), default=0), None
