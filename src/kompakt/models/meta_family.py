"""The Meta family of Kondaurova & Semenov, scaled for small images.

- `meta-baseline`: conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, FC hidden -> classes.
- `meta-head`: the hidden FC replaced by 4 x (FC -> Dropout) -> Meta(4, 4) (MetaHead).
- `meta-conv3d`: the second conv replaced by a Conv3d over the channel axis (ChannelConv3d).
- `meta-blocks`: the second conv replaced by N x (Conv2d -> BN -> MaxPool) -> Meta(N, N).
"""

from __future__ import annotations

import torch
from torch import nn

from kompakt.layers import ChannelConv3d, Meta, MetaHead
from kompakt.models.registry import MODELS


class MetaConvBlock(nn.Module):
    """N parallel (Conv2d -> BN -> MaxPool) branches of out/N maps each, mixed by Meta(N, N).

    Output group m = sum_n w[n, m] * branch_n(x): the seed's replacement for one wide conv.
    """

    def __init__(self, in_channels: int, out_channels: int, branches: int = 4) -> None:
        super().__init__()
        self.branches = branches
        group = out_channels // branches
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, group, 3, padding=1, bias=False),
                nn.BatchNorm2d(group),
                nn.MaxPool2d(2),
            )
            for _ in range(branches)
        )
        self.meta = Meta(branches, branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([path(x) for path in self.paths], dim=-1)  # (B, g, H, W, N)
        mixed = self.meta(stacked)  # (B, g, H, W, N)
        _, g, h, w, n = mixed.shape
        return mixed.permute(0, 4, 1, 2, 3).reshape(-1, n * g, h, w)


class MetaNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        variant: str = "baseline",
        hidden: int = 256,
        groups: int = 4,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        stage1 = [
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        if variant == "conv3d":
            # (32 - 17 + 1) depth positions x 4 filters = 64 maps
            stage2 = [
                ChannelConv3d(32, 64, 3, depth=17, padding=1),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        elif variant == "blocks":
            stage2 = [MetaConvBlock(32, 64, groups), nn.ReLU(inplace=True)]
        else:
            stage2 = [
                nn.Conv2d(32, 64, 3, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*stage1, *stage2)
        flat = 64 * (image_size // 4) ** 2
        if variant == "head":
            fc: nn.Module = MetaHead(flat, hidden, groups, dropout=dropout)
        else:
            fc = nn.Linear(flat, hidden)
        self.head = nn.Sequential(
            nn.Flatten(),
            fc,
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


def _register(name: str, variant: str, help: str) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        return MetaNet(num_classes, in_channels, image_size, variant=variant, **kwargs)

    MODELS.register(name, help=help)(build)


_register("meta-baseline", "baseline", "Kondaurova & Semenov's baseline: 2 convs + FC head")
_register("meta-head", "head", "meta-baseline with 4 x (FC -> Dropout) -> Meta as the FC head")
_register("meta-conv3d", "conv3d", "meta-baseline with a Conv3d over channels as the second conv")
_register(
    "meta-blocks", "blocks", "meta-baseline with N x (Conv2d -> BN -> MaxPool) -> Meta blocks"
)
