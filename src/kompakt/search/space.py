"""Search spaces (Taranov, Bakhteev & Strijov): a DAG cell whose edges mix candidate primitives.

Edge (i, j) computes sum_k softmax(gamma_ij)_k g_k(h_i) while searching (MixedOp) and keeps one
primitive after discretisation into a `kompakt.models.searched.SearchedNet` (the primitives,
stem and head live there, shared by both).
"""

from __future__ import annotations

import torch
from torch import nn

from kompakt.models.searched import SearchedNet, _head, _Stem, primitives, stem_stride

__all__ = ["MixedOp", "SearchedNet", "SuperNet"]


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


class SuperNet(nn.Module):
    """Stem -> a cell of `nodes` nodes with a MixedOp on every edge (i < j) -> head."""

    def __init__(
        self,
        space: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        width: int = 64,
        nodes: int = 3,
    ) -> None:
        super().__init__()
        self.space, self.width, self.nodes = space, width, nodes
        self.dims = (num_classes, in_channels, image_size)
        make = primitives(space, width)
        self.stride = stem_stride(space, image_size)
        self.stem = _Stem(space, in_channels, image_size, width, self.stride)
        self.edges = nn.ModuleDict(
            {
                f"{i}_{j}": MixedOp({name: build() for name, build in make.items()})
                for j in range(1, nodes + 1)
                for i in range(j)
            }
        )
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
            best = max(
                (k for k in self.edges if k.endswith(f"_{self.nodes}")),
                key=lambda k: self._best_nonzero(k)[1],
            )
            i, j = (int(v) for v in best.split("_"))
            edges.append({"from": i, "to": j, "op": self._best_nonzero(best)[0]})
        if not any(self._computes(f"{e['from']}_{e['to']}", e["op"]) for e in edges):
            # a cell of identity / pooling edges computes nothing: keep the strongest edge
            # into the last node, with its strongest primitive that has weights
            key = max(
                (f"{e['from']}_{e['to']}" for e in edges if e["to"] == self.nodes),
                key=lambda k: max(self._weighted(k).values()),
            )
            op = max(self._weighted(key), key=self._weighted(key).__getitem__)
            for e in edges:
                if f"{e['from']}_{e['to']}" == key:
                    e["op"] = op
        return {
            "space": self.space,
            "width": self.width,
            "nodes": self.nodes,
            "stem_stride": self.stride,
            "edges": edges,
        }

    def _computes(self, key: str, op: str) -> bool:
        edge = self.edges[key]
        return any(p.numel() for p in edge.ops[edge.names.index(op)].parameters())

    def _weighted(self, key: str) -> dict[str, float]:
        """Mixture weight of each primitive of an edge that has parameters."""
        edge = self.edges[key]
        w = edge.weights().detach()
        return {n: float(w[k]) for k, n in enumerate(edge.names) if self._computes(key, n)}

    def _best_nonzero(self, key: str) -> tuple[str, float]:
        edge = self.edges[key]
        w = edge.weights().detach()
        options = [(n, float(w[k])) for k, n in enumerate(edge.names) if n != "zero"]
        return max(options, key=lambda item: item[1])
