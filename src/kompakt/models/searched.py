"""Searched architectures (Taranov, Bakhteev & Strijov): the plain model rebuilt from a genotype.

A genotype is a JSON-able dict {"space", "width", "nodes", "edges": [{"from", "to", "op"}]}:
node 0 is the stem's output, node j > 0 sums its incoming edges, and each kept edge runs one
primitive. It lives with the models (not with the search) so that a searched checkpoint reloads
and exports like any zoo model, and `kompakt.search` imports models, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.layers import TTConv2d, TTLinear
from kompakt.models.registry import MODELS


class Zero(nn.Module):
    """The 'no edge' primitive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def _mlp_primitives(width: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "linear": lambda: nn.Sequential(nn.Linear(width, width), nn.ReLU()),
        "linear-narrow": lambda: nn.Sequential(
            nn.Linear(width, max(1, width // 4)), nn.ReLU(), nn.Linear(max(1, width // 4), width)
        ),
        "tt-linear": lambda: nn.Sequential(TTLinear(width, width, ranks=4), nn.ReLU()),
        "tanh": lambda: nn.Tanh(),
        "identity": lambda: nn.Identity(),
        "zero": lambda: Zero(),
    }


def _conv_primitives(channels: int) -> dict[str, Callable[[], nn.Module]]:
    def block(conv: nn.Module) -> nn.Module:
        return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())

    groups = 4 if channels % 4 == 0 else 1
    return {
        "conv3x3": lambda: block(nn.Conv2d(channels, channels, 3, padding=1, bias=False)),
        "conv5x5": lambda: block(nn.Conv2d(channels, channels, 5, padding=2, bias=False)),
        "tt-conv3x3": lambda: block(
            TTConv2d(channels, channels, 3, padding=1, ranks=4, bias=False)
        ),
        "grouped-conv3x3": lambda: block(
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        ),
        "identity": lambda: nn.Identity(),
        "zero": lambda: Zero(),
    }


SPACES = {"mlp": _mlp_primitives, "conv": _conv_primitives}


def primitives(space: str, width: int) -> dict[str, Callable[[], nn.Module]]:
    if space not in SPACES:
        raise ConfigError(f"search space must be one of {sorted(SPACES)}, got {space!r}")
    return SPACES[space](width)


def stem_stride(space: str, image_size: int) -> int:
    """The conv stem halves images of 16 pixels or more: the cell then runs at a quarter of
    the positions, which keeps a conv-space search epoch on mnist5k under a minute."""
    return 2 if space == "conv" and image_size >= 16 else 1


class _Stem(nn.Module):
    def __init__(
        self, space: str, in_channels: int, image_size: int, width: int, stride: int = 1
    ) -> None:
        super().__init__()
        if space == "mlp":
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(in_channels * image_size**2, width), nn.ReLU()
            )
            self.head_in = width
        else:
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            self.head_in = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _head(space: str, width: int, num_classes: int) -> nn.Module:
    if space == "mlp":
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


# what `build_model("searched", ...)` gives without a genotype: one linear edge
DEFAULT_GENOTYPE = {
    "space": "mlp",
    "width": 64,
    "nodes": 1,
    "edges": [{"from": 0, "to": 1, "op": "linear"}],
}


@MODELS.register("searched", help="an architecture found by `kompakt search` (genotype kwarg)")
class SearchedNet(nn.Module):
    """The plain model of a genotype: only the chosen primitive on each kept edge."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, genotype: dict | None = None
    ) -> None:
        super().__init__()
        genotype = genotype or DEFAULT_GENOTYPE
        if "edges" not in genotype or not genotype["edges"]:
            raise ConfigError("model 'searched' needs a genotype with edges (kompakt search)")
        self.genotype = genotype
        self.space, self.width = genotype["space"], genotype["width"]
        self.nodes = genotype["nodes"]
        make = primitives(self.space, self.width)
        # genotypes written before the strided stem existed have no stem_stride: stride 1
        self.stem = _Stem(
            self.space, in_channels, image_size, self.width, genotype.get("stem_stride", 1)
        )
        self.edge_list = [(e["from"], e["to"]) for e in genotype["edges"]]
        self.edges = nn.ModuleDict(
            {f"{e['from']}_{e['to']}": make[e["op"]]() for e in genotype["edges"]}
        )
        self.head = _head(self.space, self.width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor | None] = [self.stem(x)]
        for j in range(1, self.nodes + 1):
            inputs = [
                self.edges[f"{i}_{j}"](states[i])
                for i, t in self.edge_list
                if t == j and states[i] is not None
            ]
            states.append(sum(inputs) if inputs else None)
        return self.head(states[-1])
