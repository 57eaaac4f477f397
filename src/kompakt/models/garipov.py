"""Garipov's CIFAR-10 baselines (thesis section 6) and their TT versions.

`conv`: conv64-BN-ReLU-maxpool3/2, conv128-BN-ReLU-maxpool3/2, conv128-BN-ReLU, conv128,
global average pool, FC 128 -> classes (the thesis's avgpool4/4 leaves 2x2 on 32x32 inputs
with an FC of 128 inputs, so the pool here is global).
`conv-fc`: the pool replaced by FC (128 * s * s) -> 1536 -> 512 -> classes with s the spatial size
after the two max-pools (8 on 32x32: FC 8192x1536 and 1536x512 as in the thesis).
TT versions: TTConv2d for the three 128-channel convs (the first conv stays dense, as in the
thesis), TTLinear for the two hidden FC layers.
"""

from __future__ import annotations

from torch import nn

from kompakt.layers import TTConv2d, TTLinear
from kompakt.models.common import pooled_size
from kompakt.models.registry import MODELS


def _features(in_channels: int, tt_conv: bool, conv_ranks: int) -> list[nn.Module]:
    def conv(c_in: int, c_out: int) -> nn.Module:
        if tt_conv and c_in >= 16:
            return TTConv2d(c_in, c_out, 3, padding=1, ranks=conv_ranks, bias=False)
        return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)

    return [
        conv(in_channels, 64),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        conv(64, 128),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        conv(128, 128),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        conv(128, 128),
    ]


class GaripovNet(nn.Module):
    """Garipov's `conv` / `conv-fc` nets with optional TT convs and TT FC layers."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        fc: bool = False,
        tt_conv: bool = False,
        tt_fc: bool = False,
        conv_ranks: int = 8,
        fc_ranks: int = 8,
        hidden: tuple[int, int] = (1536, 512),
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(*_features(in_channels, tt_conv, conv_ranks))
        if fc:
            flat = 128 * pooled_size(image_size, 2) ** 2

            def linear(n_in: int, n_out: int) -> nn.Module:
                return TTLinear(n_in, n_out, ranks=fc_ranks) if tt_fc else nn.Linear(n_in, n_out)

            self.head = nn.Sequential(
                nn.Flatten(),
                linear(flat, hidden[0]),
                nn.ReLU(inplace=True),
                linear(hidden[0], hidden[1]),
                nn.ReLU(inplace=True),
                nn.Linear(hidden[1], num_classes),
            )
        else:
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)
            )

    def forward(self, x):
        return self.head(self.features(x))


def _register(name: str, help: str, **flags: bool) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        return GaripovNet(num_classes, in_channels, image_size, **flags, **kwargs)

    MODELS.register(name, help=help)(build)


_register("garipov-conv", "Garipov's conv baseline (4 convs, global pool, FC)")
_register("garipov-conv-fc", "Garipov's conv-fc baseline (4 convs, FC 8192-1536-512)", fc=True)
_register("garipov-tt-conv", "garipov-conv with TT convs (ranks: conv_ranks)", tt_conv=True)
_register("garipov-conv-tt-fc", "garipov-conv-fc with TT FC layers", fc=True, tt_fc=True)
_register(
    "garipov-tt-conv-tt-fc",
    "garipov-conv-fc with TT convs and TT FC layers",
    fc=True,
    tt_conv=True,
    tt_fc=True,
)
