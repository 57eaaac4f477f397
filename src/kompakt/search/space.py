"""Search spaces (seed 004): a DAG cell whose edges mix candidate primitives.

Node 0 is the stem's output; node j > 0 sums its incoming edges; edge (i, j) computes
sum_k softmax(gamma_ij)_k g_k(h_i) while searching (MixedOp) and keeps one primitive after
discretisation. `SearchedNet` is the plain model rebuilt from a genotype (a JSON-able dict), so
a searched architecture is saved, reloaded and exported like any zoo model.
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


class MixedOp(nn.Module):
    """Edge output = sum_k softmax(gamma)_k g_k(x), gamma learnable (the structure parameters)."""

    def __init__(self, candidates: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(candidates)
        self.ops = nn.ModuleList(candidates.values())
        self.gamma = nn.Parameter(torch.zeros(len(self.ops)))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.gamma, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        return sum(w[k] * op(x) for k, op in enumerate(self.ops))

    def choice(self) -> str:
        return self.names[int(self.gamma.argmax())]


class _Stem(nn.Module):
    def __init__(self, space: str, in_channels: int, image_size: int, width: int) -> None:
        super().__init__()
        if space == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, width),
                                      nn.ReLU())  # fmt: skip
            self.head_in = width
        else:
            self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())  # fmt: skip
            self.head_in = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _head(space: str, width: int, num_classes: int) -> nn.Module:
    if space == "mlp":
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class SuperNet(nn.Module):
    """Stem -> a cell of `nodes` nodes with a MixedOp on every edge (i < j) -> head."""

    def __init__(self, space: str, num_classes: int, in_channels: int, image_size: int,
                 width: int = 64, nodes: int = 3) -> None:  # fmt: skip
        super().__init__()
        self.space, self.width, self.nodes = space, width, nodes
        self.dims = (num_classes, in_channels, image_size)
        make = primitives(space, width)
        self.stem = _Stem(space, in_channels, image_size, width)
        self.edges = nn.ModuleDict({
            f"{i}_{j}": MixedOp({name: build() for name, build in make.items()})
            for j in range(1, nodes + 1) for i in range(j)
        })  # fmt: skip
        self.head = _head(space, width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [self.stem(x)]
        for j in range(1, self.nodes + 1):
            states.append(sum(self.edges[f"{i}_{j}"](states[i]) for i in range(j)))
        return self.head(states[-1])

    def structure_parameters(self) -> list[nn.Parameter]:
        return [edge.gamma for edge in self.edges.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.structure_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def genotype(self) -> dict:
        """argmax per edge, zero edges dropped; the last node always keeps an input."""
        edges = []
        for key, edge in self.edges.items():
            i, j = (int(v) for v in key.split("_"))
            if edge.choice() != "zero":
                edges.append({"from": i, "to": j, "op": edge.choice()})
        if not any(e["to"] == self.nodes for e in edges):
            best = max((k for k in self.edges if k.endswith(f"_{self.nodes}")),
                       key=lambda k: self._best_nonzero(k)[1])  # fmt: skip
            i, j = (int(v) for v in best.split("_"))
            edges.append({"from": i, "to": j, "op": self._best_nonzero(best)[0]})
        return {"space": self.space, "width": self.width, "nodes": self.nodes, "edges": edges}

    def _best_nonzero(self, key: str) -> tuple[str, float]:
        edge = self.edges[key]
        w = edge.weights().detach()
        options = [(n, float(w[k])) for k, n in enumerate(edge.names) if n != "zero"]
        return max(options, key=lambda item: item[1])


# what `build_model("searched", ...)` gives without a genotype: one linear edge
DEFAULT_GENOTYPE = {"space": "mlp", "width": 64, "nodes": 1,
                    "edges": [{"from": 0, "to": 1, "op": "linear"}]}  # fmt: skip


@MODELS.register("searched", help="an architecture found by `kompakt search` (genotype kwarg)")
class SearchedNet(nn.Module):
    """The plain model of a genotype: only the chosen primitive on each kept edge."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int,
                 genotype: dict | None = None) -> None:  # fmt: skip
        super().__init__()
        genotype = genotype or DEFAULT_GENOTYPE
        if "edges" not in genotype or not genotype["edges"]:
            raise ConfigError("model 'searched' needs a genotype with edges (kompakt search)")
        self.genotype = genotype
        self.space, self.width = genotype["space"], genotype["width"]
        self.nodes = genotype["nodes"]
        make = primitives(self.space, self.width)
        self.stem = _Stem(self.space, in_channels, image_size, self.width)
        self.edge_list = [(e["from"], e["to"]) for e in genotype["edges"]]
        self.edges = nn.ModuleDict({f"{e['from']}_{e['to']}": make[e["op"]]()
                                    for e in genotype["edges"]})  # fmt: skip
        self.head = _head(self.space, self.width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor | None] = [self.stem(x)]
        for j in range(1, self.nodes + 1):
            inputs = [self.edges[f"{i}_{j}"](states[i]) for i, t in self.edge_list
                      if t == j and states[i] is not None]  # fmt: skip
            states.append(sum(inputs) if inputs else None)
        return self.head(states[-1])
