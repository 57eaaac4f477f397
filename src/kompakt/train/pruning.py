"""Filter pruning: relevance during training (seed 001), L1 and Euclidean baselines, compaction.

Structure comes from a torch.fx trace: every Conv2d (groups=1) is a producer; its output passes
through BatchNorm / activations / pooling / dropout / flatten to consumers (Conv2d in-channels,
or Linear in-features after a flatten); a residual `add` ties the channels of everything that
reaches it into one group (pruned together or not at all). A group's mask zeroes its channels
at the producers' outputs *after* their BatchNorm, which is exactly what removing the channels
does, so `compact_` (physical removal) gives the masked model's outputs.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from kompakt.errors import ConfigError

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)  # fmt: skip
PASS_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.max_pool2d,
                  nn.functional.avg_pool2d, nn.functional.dropout}  # fmt: skip
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


# -- masks ------------------------------------------------------------------------------------


class Masker:
    """Applies group masks at the producers' outputs (after BatchNorm) with forward hooks."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        self.model, self.groups = model, groups
        modules = dict(model.named_modules())
        self.handles = []
        for group in groups:
            if group.mask is None:
                group.mask = torch.ones(group.channels)
            for conv, bn in group.producers:
                point = modules[bn or conv]
                self.handles.append(point.register_forward_hook(self._hook(group)))
        self.temporary: dict[int, torch.Tensor] = {}

    def _hook(self, group: ChannelGroup):
        def apply(module, args, output):
            mask = group.mask
            extra = self.temporary.get(id(group))
            if extra is not None:
                mask = mask * extra
            return output * mask.to(output.dtype).view(1, -1, 1, 1)

        return apply

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _weights(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """(channels, features): every producer's filter for each channel, concatenated."""
    modules = dict(model.named_modules())
    return torch.cat([modules[conv].weight.detach().flatten(1) for conv, _ in group.producers], 1)


def _keep_top(scores: torch.Tensor, ratio: float, alive: torch.Tensor) -> torch.Tensor:
    """A mask that drops round(ratio * channels) of the lowest-scoring live channels (>= 1 kept)."""
    channels = len(scores)
    drop = min(round(ratio * channels), int(alive.sum()) - 1)
    mask = alive.clone()
    if drop <= 0:
        return mask
    order = torch.argsort(torch.where(alive.bool(), scores, torch.full_like(scores, -math.inf)))
    removed = [i for i in order.tolist() if alive[i]][:drop]
    mask[removed] = 0
    return mask


def _check_ratio(ratio: float | None) -> None:
    if ratio is not None and not 0 <= ratio < 1:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")


def _select(groups: list[ChannelGroup], layers: list[str] | None) -> list[ChannelGroup]:
    if layers is None:
        return groups
    chosen = [g for g in groups if any(conv in layers for conv, _ in g.producers)]
    unknown = set(layers) - {conv for g in groups for conv, _ in g.producers}
    if unknown:
        names = [conv for g in groups for conv, _ in g.producers]
        raise ConfigError(f"not prunable conv layers: {sorted(unknown)}; prunable: {names}")
    return chosen


def example_input(model: nn.Module) -> torch.Tensor:
    """A (1, C, H, W) zero input: zoo models carry `kompakt_input_shape`; pass `example=` for
    your own models."""
    shape = getattr(model, "kompakt_input_shape", None)
    if shape is None:
        raise ConfigError(
            "pass example=torch.zeros(1, C, H, W): this model does not record its input shape"
        )
    return torch.zeros(1, *shape)


def l1_prune(
    model: nn.Module, ratio: float, layers: list[str] | None = None,
    example: torch.Tensor | None = None,
) -> list[ChannelGroup]:  # fmt: skip
    """Mask, per group, the `ratio` of filters with the smallest L1 norm (Li et al. 2017)."""
    _check_ratio(ratio)
    groups = _select(find_groups(model, example if example is not None else example_input(model)),
                     layers)  # fmt: skip
    for group in groups:
        alive = group.mask if group.mask is not None else torch.ones(group.channels)
        group.mask = _keep_top(_weights(model, group).abs().sum(1), ratio, alive)
    return groups


def euclidean_prune(
    model: nn.Module, ratio: float | None = None, threshold: float | None = None,
    layers: list[str] | None = None, example: torch.Tensor | None = None,
) -> list[ChannelGroup]:  # fmt: skip
    """Mask one filter of each pair closer than `threshold`, or greedily drop the filter closest
    to another until `ratio` of the group is gone (filters redundant with a neighbour go first)."""
    _check_ratio(ratio)
    if (ratio is None) == (threshold is None):
        raise ConfigError("euclidean_prune takes exactly one of ratio or threshold")
    groups = _select(find_groups(model, example if example is not None else example_input(model)),
                     layers)  # fmt: skip
    for group in groups:
        w = _weights(model, group)
        dist = torch.cdist(w, w)
        dist.fill_diagonal_(math.inf)
        mask = torch.ones(group.channels)
        limit = round(ratio * group.channels) if ratio is not None else group.channels - 1
        for _ in range(min(limit, group.channels - 1)):
            live = mask.bool()
            sub = dist[live][:, live]
            value = sub.min()
            if threshold is not None and value >= threshold:
                break
            i, j = divmod(int(sub.argmin()), sub.shape[1])
            idx = live.nonzero().flatten()
            # of the closest pair drop the one with the smaller norm (it carries less signal)
            a, b = int(idx[i]), int(idx[j])
            victim = a if w[a].norm() <= w[b].norm() else b
            mask[victim] = 0
        group.mask = mask
    return groups


# -- relevance pruning during training (seed 001) ---------------------------------------------


@dataclass
class RelevanceConfig:
    """Relevance pruning settings.

    Args:
        exclude_fraction: share of each group's filters (and dummies) masked at each step.
        every: run the removal test every `every` steps (K).
        delta: remove filter j when P(r_j > r_dummy) <= delta.
        target: overall filter sparsity at which removal stops.
        dummies: fictitious filters per group (their relevance is the chance baseline).
        warmup: steps before the first test.
        total_steps, ramp: with the run's length known, the sparsity is brought up to
            target * steps / (ramp * total_steps) at each test (least relevant filters first)
            when the statistical test alone removes fewer, so the target is met while the
            remaining steps can still recover the accuracy.
    """

    exclude_fraction: float = 0.25
    every: int = 50
    delta: float = 0.1
    target: float = 0.6
    dummies: int = 32
    warmup: int = 100
    total_steps: int | None = None  # when known, sparsity follows a schedule (see `test`)
    ramp: float = 0.6  # reach the target after this share of total_steps, then recover


class RelevancePruner:
    """A training-loop hook: `before_step()` masks a random subset, `after_step(loss)` updates
    relevances and, every K steps, removes the filters no more relevant than chance.

    Sign: a filter in use during a step whose loss is below the running mean gains relevance,
    so a filter whose presence lowers the loss ends up *more* relevant.
    """

    def __init__(
        self, model: nn.Module, config: RelevanceConfig | None = None,
        layers: list[str] | None = None, example: torch.Tensor | None = None, seed: int = 0,
    ) -> None:  # fmt: skip
        self.config = config or RelevanceConfig()
        if not 0 < self.config.exclude_fraction < 1:
            raise ConfigError("exclude_fraction must be in (0, 1)")
        self.model = model
        self.groups = _select(find_groups(model, example if example is not None
                                          else example_input(model)), layers)  # fmt: skip
        if not self.groups:
            raise ConfigError("this model has no prunable conv groups")
        for g in self.groups:
            g.mask = torch.ones(g.channels)
        self.masker = Masker(model, self.groups)
        self.gen = torch.Generator().manual_seed(seed)
        self.relevance = [torch.zeros(g.channels, dtype=torch.float64) for g in self.groups]
        self.dummy = [torch.zeros(self.config.dummies, dtype=torch.float64) for _ in self.groups]
        self.in_use: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mean_loss: float | None = None
        self.steps = 0

    @property
    def total_channels(self) -> int:
        return sum(g.channels for g in self.groups)

    def sparsity(self) -> float:
        removed = sum(int((g.mask == 0).sum()) for g in self.groups)
        return removed / self.total_channels

    @property
    def done(self) -> bool:
        """The target is reached: the remaining steps train the pruned net without exclusion."""
        return self.sparsity() >= self.config.target - 0.5 / self.total_channels

    def before_step(self) -> None:
        """Randomly exclude part of each group's live filters (and dummies) for this step."""
        self.in_use = []
        if self.done:
            return
        for group in self.groups:
            keep = (torch.rand(group.channels, generator=self.gen)
                    >= self.config.exclude_fraction).float()  # fmt: skip
            # like inverted dropout: the kept filters are scaled up so that activations have
            # the same expected size in these steps as with every filter in (evaluation)
            scaled = keep / (1.0 - self.config.exclude_fraction)
            dummy_keep = (torch.rand(self.config.dummies, generator=self.gen)
                          >= self.config.exclude_fraction).float()  # fmt: skip
            self.masker.temporary[id(group)] = scaled
            self.in_use.append((keep * group.mask, dummy_keep))

    def after_step(self, loss: float) -> None:
        """Update relevances from this step's loss; test and remove every K steps."""
        self.masker.temporary.clear()  # excluded-but-kept filters are restored
        if not self.in_use:  # nothing was excluded (target reached)
            return
        if self.mean_loss is None:
            self.mean_loss = loss
        advantage = self.mean_loss - loss  # > 0: this subset did better than usual
        for relevance, dummy, (used, dummy_used) in zip(
            self.relevance, self.dummy, self.in_use, strict=True
        ):
            relevance += advantage * used.double()
            dummy += advantage * dummy_used.double()
        self.mean_loss = 0.98 * self.mean_loss + 0.02 * loss
        self.steps += 1
        if self.steps >= self.config.warmup and self.steps % self.config.every == 0:
            self.test()

    def _ranked(self, delta: float) -> list[tuple[float, float, int, int]]:
        """Live filters with P(r_j > r_dummy) <= delta as (p, relevance, group, channel),
        least relevant first; P is comparable across groups, relevance breaks ties."""
        candidates = []
        for gi, (group, relevance, dummy) in enumerate(
            zip(self.groups, self.relevance, self.dummy, strict=True)
        ):
            for j in range(group.channels):
                if group.mask[j] == 0:
                    continue
                p_above = float((relevance[j] > dummy).double().mean())
                if p_above <= delta:
                    candidates.append((p_above, float(relevance[j]), gi, j))
        return sorted(candidates)

    def _remove(self, candidates: list, limit: float | None = None) -> list[tuple[str, int]]:
        removed = []
        limit = self.config.target if limit is None else min(limit, self.config.target)
        budget = round(limit * self.total_channels) - round(self.sparsity() * self.total_channels)
        for _, _, gi, j in candidates:
            if len(removed) >= budget:
                break
            group = self.groups[gi]
            if int(group.mask.sum()) <= 1:
                continue
            group.mask[j] = 0
            removed.append((group.name, j))
        return removed

    def test(self) -> list[tuple[str, int]]:
        """Remove filters with P(r_j > r_dummy) <= delta, least relevant first, up to target;
        then, on a schedule, the least relevant ones (see RelevanceConfig)."""
        removed = self._remove(self._ranked(self.config.delta))
        if self.config.total_steps:
            progress = self.steps / max(1.0, self.config.ramp * self.config.total_steps)
            removed += self._remove(self._ranked(1.0), self.config.target * min(1.0, progress))
        return removed

    def finish(self, reach_target: bool = True) -> list[ChannelGroup]:
        """Stop the random exclusion. With `reach_target`, when the statistical test stopped
        short of the target sparsity, the least relevant remaining filters go too (so methods
        compare at equal sparsity). The permanent masks stay on the groups."""
        self.masker.temporary.clear()
        if reach_target:
            self._remove(self._ranked(delta=1.0))
        return self.groups


def apply_masks(model: nn.Module, groups: list[ChannelGroup]) -> Masker:
    """Hook the groups' masks into `model` (the masked model `compact_` must reproduce)."""
    return Masker(model, groups)


# -- compaction -------------------------------------------------------------------------------


def _resize_conv(conv: nn.Conv2d, out_keep=None, in_keep=None) -> nn.Conv2d:
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_keep] if out_keep is not None else conv.bias)
    new.train(conv.training)
    return new


def _resize_bn(bn: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None)  # fmt: skip
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def _resize_linear(linear: nn.Linear, keep_features) -> nn.Linear:
    new = nn.Linear(len(keep_features), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, keep_features])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    new.train(linear.training)
    return new


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def compact_(model: nn.Module, groups: list[ChannelGroup]) -> list[dict]:
    """Physically remove the masked channels of `groups` from `model`, in place.

    Returns:
        resize records ({"name", "type", "args"}) for the checkpoint, so the architecture
        change reloads without pickled code (see `apply_resizes_`).
    """
    for group in groups:
        if group.mask is None or bool(group.mask.all()):
            continue
        keep = group.mask.nonzero().flatten()
        for conv, bn in group.producers:
            _set(model, conv, _resize_conv(model.get_submodule(conv), out_keep=keep))
            if bn:
                _set(model, bn, _resize_bn(model.get_submodule(bn), keep))
        for name, per_channel in group.consumers:
            module = model.get_submodule(name)
            if isinstance(module, nn.Conv2d):
                _set(model, name, _resize_conv(module, in_keep=keep))
            else:
                features = (keep[:, None] * per_channel + torch.arange(per_channel)).flatten()
                _set(model, name, _resize_linear(module, features))
    return resize_records(model)


def resize_records(model: nn.Module) -> list[dict]:
    """Constructor records of every Conv2d / BatchNorm2d / Linear (their current sizes)."""
    records = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
            records.append(
                {
                    "name": name,
                    "type": "Conv2d",
                    "args": {
                        "in_channels": m.in_channels,
                        "out_channels": m.out_channels,
                        "kernel_size": list(m.kernel_size),
                        "stride": list(m.stride),
                        "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                        "dilation": list(m.dilation),
                        "groups": m.groups,
                        "bias": m.bias is not None,
                    },
                }
            )
        elif type(m) is nn.BatchNorm2d:
            records.append(
                {
                    "name": name,
                    "type": "BatchNorm2d",
                    "args": {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum},
                }
            )
        elif type(m) is nn.Linear:
            records.append({"name": name, "type": "Linear", "args": {
                "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}})  # fmt: skip
    return records


RESIZABLE = {"Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "Linear": nn.Linear}


def apply_resizes_(model: nn.Module, records: list[dict]) -> nn.Module:
    """Rebuild modules whose recorded sizes differ from the fresh model's (fresh parameters)."""
    for record in records:
        try:
            current = model.get_submodule(record["name"])
        except AttributeError:
            raise ConfigError(
                f"checkpoint resizes {record['name']!r}, absent in the model"
            ) from None
        cls = RESIZABLE.get(record["type"])
        if cls is None:
            raise ConfigError(f"unknown resize type {record['type']!r}")
        fresh = cls(**record["args"])
        if any(
            getattr(current, k, None) != getattr(fresh, k, None)
            for k in ("in_channels", "out_channels", "num_features", "in_features", "out_features")
        ):
            _set(model, record["name"], fresh)
    return model


# -- `kompakt prune` --------------------------------------------------------------------------

METHODS = ("l1", "euclidean", "relevance")


def prune_checkpoint(
    ckpt: str, method: str, ratio: float, finetune_epochs: int, out: str,
    lr: float = 0.01, data_root: str | None = None, quiet: bool = False,
) -> dict:  # fmt: skip
    """Prune a trained checkpoint and fine-tune; writes a compact checkpoint under `out`.

    l1 / euclidean mask `ratio` of each group's filters, compact, then fine-tune; relevance
    fine-tunes with the relevance pruner running until `ratio` of all filters is gone.
    """
    from pathlib import Path

    from kompakt.train.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint
    from kompakt.train.trainer import TrainConfig, fit

    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    _check_ratio(ratio)
    source = load_checkpoint(ckpt)
    data = source["data"]
    common = {"data": data["name"], "data_root": data_root or data.get("root"), "lr": lr,
              "out": out, "quiet": quiet}  # fmt: skip
    if method == "relevance":
        if finetune_epochs < 1:
            raise ConfigError("relevance pruning needs --finetune-epochs >= 1 (it prunes while "
                              "training)")  # fmt: skip
        return fit(TrainConfig(init_from=ckpt, epochs=finetune_epochs, prune="relevance",
                               prune_target=ratio, **common))  # fmt: skip
    model = model_from_checkpoint(source)
    example = torch.zeros(1, *data["input_shape"])
    groups = (l1_prune(model, ratio, example=example) if method == "l1"
              else euclidean_prune(model, ratio=ratio, example=example))  # fmt: skip
    spec = dict(source["model"])
    spec["resized"] = compact_(model, groups)
    pruned = {**source, "model": spec, "state_dict": {k: v.detach().cpu()
                                                      for k, v in model.state_dict().items()},
              "train": {"pruned_from": str(ckpt), "method": method, "ratio": ratio}}  # fmt: skip
    path = Path(out) / "pruned.pt"
    atomic_save(pruned, path)
    if finetune_epochs < 1:
        return {"out": out, "best": str(path), "params": sum(p.numel() for p in model.parameters())}
    return fit(TrainConfig(init_from=str(path), epochs=finetune_epochs, **common))
