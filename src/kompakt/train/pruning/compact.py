"""Masks (the pruned model before surgery) and `compact_` (physical removal, exact: masks are
applied after BatchNorm, which is what removing the channels does)."""

from __future__ import annotations

import torch
from torch import nn

from kompakt.models.common import set_submodule
from kompakt.models.resize import resize_bn, resize_conv, resize_linear, resize_records
from kompakt.train.pruning.graph import ChannelGroup


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


def apply_masks(model: nn.Module, groups: list[ChannelGroup]) -> Masker:
    """Hook the groups' masks into `model` (the masked model `compact_` must reproduce)."""
    return Masker(model, groups)


class MaskedPruning(list):
    """What `l1_prune` / `euclidean_prune` return: the pruned channel groups (a list), with
    their masks already hooked into the model, so from now on `model(x)` computes the pruned
    network (what you evaluate is what `compact()` will keep).

    `compact()` removes the masked filters physically (and the hooks); `undo()` removes the
    hooks, leaving the model unpruned (the masks stay on the groups).
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        super().__init__(groups)
        self.model = model
        self.masker = apply_masks(model, groups)

    def compact(self) -> list[dict]:
        """`compact_` the model (returns its resize records) and drop the mask hooks."""
        self.masker.remove()
        return compact_(self.model, list(self))

    def undo(self) -> None:
        self.masker.remove()

    @property
    def sparsity(self) -> float:
        total = sum(g.channels for g in self)
        return sum(int((g.mask == 0).sum()) for g in self) / max(1, total)


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
            set_submodule(model, conv, resize_conv(model.get_submodule(conv), out_keep=keep))
            if bn:
                set_submodule(model, bn, resize_bn(model.get_submodule(bn), keep))
        for name, per_channel in group.consumers:
            module = model.get_submodule(name)
            if isinstance(module, nn.Conv2d):
                set_submodule(model, name, resize_conv(module, in_keep=keep))
            else:
                features = (keep[:, None] * per_channel + torch.arange(per_channel)).flatten()
                set_submodule(model, name, resize_linear(module, features))
    return resize_records(model)
