"""Channel groups from a torch.fx trace: which convs, BatchNorms and consumers share channels."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from kompakt.errors import ConfigError

PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
PASS_FUNCTIONS = {
    torch.relu,
    nn.functional.relu,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.dropout,
}
ADD = {operator.add, torch.add, operator.iadd}


@dataclass
class ChannelGroup:
    """Channels pruned together: producers (conv [+ bn]) and their consumers."""

    channels: int
    producers: list[tuple[str, str | None]] = field(default_factory=list)  # (conv, bn or None)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, features/channel)
    mask: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return self.producers[0][0]


class _Blocked(Exception):
    """A channel source reaches an op we cannot follow: its group is not prunable."""


def _trace(model: nn.Module) -> fx.GraphModule:
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            # compressed layers are opaque: their channels are never pruned
            return not list(m.children()) or type(m).__module__.startswith("kompakt.layers")

    try:
        graph = Tracer().trace(model)
    except Exception as error:
        raise ConfigError(
            f"filter pruning needs a torch.fx-traceable model; tracing failed: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return fx.GraphModule(model, graph)


def find_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The prunable channel groups of `model` (those whose every path we can follow)."""
    gm = _trace(model)
    modules = dict(model.named_modules())
    parent = {}  # union-find over producer conv names

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    source: dict[fx.Node, str | None] = {}  # node -> producer conv whose channels it carries
    spatial: dict[fx.Node, int] = {}  # elements per channel after a flatten
    bn_of: dict[str, str] = {}
    consumers: dict[str, list[tuple[str, int]]] = {}
    blocked: set[str] = set()
    shapes = _shapes(model, example)

    for node in gm.graph.nodes:
        target = modules.get(node.target) if node.op == "call_module" else None
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        src = next((source[a] for a in inputs if source.get(a) is not None), None)
        if isinstance(target, nn.Conv2d) and not isinstance(target, nn.Conv3d):
            if src is not None:
                consumers.setdefault(find(src), []).append((node.target, 1))
            if target.groups == 1:
                parent[node.target] = node.target
                source[node] = node.target
            continue
        if isinstance(target, nn.Linear):
            if src is not None:
                per_channel = spatial.get(inputs[0], 0)
                if per_channel:
                    consumers.setdefault(find(src), []).append((node.target, per_channel))
                else:
                    blocked.add(find(src))
            continue
        if src is None:
            continue
        if isinstance(target, nn.BatchNorm2d):
            producer = inputs[0].target if inputs[0].op == "call_module" else None
            if producer in parent and source.get(inputs[0]) == producer:
                bn_of[producer] = node.target
            else:
                blocked.add(find(src))
            source[node] = src
        elif (
            isinstance(target, PASS_MODULES)
            or (isinstance(target, nn.Sequential) and len(target) == 0)
            or (node.op == "call_function" and node.target in PASS_FUNCTIONS)
        ):
            source[node] = src
        elif (
            isinstance(target, nn.Flatten)
            or (node.op == "call_method" and node.target == "flatten")
            or (node.op == "call_function" and node.target is torch.flatten)
        ):
            shape = shapes.get(inputs[0].name)
            spatial[node] = math.prod(shape[2:]) if shape is not None else 0
            source[node] = src
        elif isinstance(target, nn.AdaptiveAvgPool2d):
            source[node] = src
        elif node.op == "call_function" and node.target in ADD:
            roots = {find(source[a]) for a in inputs if source.get(a) is not None}
            if len(roots) != len(inputs):
                blocked.update(roots)
            first, *rest = sorted(roots)
            for other in rest:
                parent[other] = first
                consumers.setdefault(first, []).extend(consumers.pop(other, []))
            source[node] = first
        else:  # anything else (cat, reshape, matmul, compressed layers...) ends prunability
            blocked.add(find(src))
            if node.op == "output":
                continue

    groups: dict[str, ChannelGroup] = {}
    for conv in parent:
        root = find(conv)
        channels = modules[conv].out_channels
        group = groups.setdefault(root, ChannelGroup(channels))
        group.producers.append((conv, bn_of.get(conv)))
    for root, items in consumers.items():
        if find(root) in groups:
            groups[find(root)].consumers.extend(items)
    blocked_roots = {find(b) for b in blocked if b in parent}
    # a group whose output is the model's output (no consumer) is the classifier: never pruned
    return [g for r, g in groups.items() if r not in blocked_roots and g.consumers]


def _shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """Output shape of every traced node for one example (for flatten bookkeeping)."""
    gm = _trace(model)
    shapes: dict[str, tuple] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = tuple(out.shape)
            return out

    was_training = model.training
    model.eval()
    with torch.no_grad():
        Recorder(gm).run(example)
    model.train(was_training)
    return shapes
