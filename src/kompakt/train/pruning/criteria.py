"""Which filters to drop: L1 norm (Li et al. 2017) and Euclidean redundancy baselines."""

from __future__ import annotations

import math

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.train.pruning.compact import MaskedPruning
from kompakt.train.pruning.graph import ChannelGroup, find_groups


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
    model: nn.Module,
    ratio: float,
    layers: list[str] | None = None,
    example: torch.Tensor | None = None,
) -> MaskedPruning:
    """Mask, per group, the `ratio` of filters with the smallest L1 norm (Li et al. 2017).

    The masks are hooked into `model` at once (it now computes the pruned outputs); call
    `.compact()` on the result to remove the filters physically, `.undo()` to unprune."""
    _check_ratio(ratio)
    groups = _select(
        find_groups(model, example if example is not None else example_input(model)), layers
    )
    for group in groups:
        alive = group.mask if group.mask is not None else torch.ones(group.channels)
        group.mask = _keep_top(_weights(model, group).abs().sum(1), ratio, alive)
    return MaskedPruning(model, groups)


def euclidean_prune(
    model: nn.Module,
    ratio: float | None = None,
    threshold: float | None = None,
    layers: list[str] | None = None,
    example: torch.Tensor | None = None,
) -> MaskedPruning:
    """Mask one filter of each pair closer than `threshold`, or greedily drop the filter closest
    to another until `ratio` of the group is gone (filters redundant with a neighbour go first).

    Like `l1_prune`, the masks are hooked into `model` at once; `.compact()` / `.undo()`."""
    _check_ratio(ratio)
    if (ratio is None) == (threshold is None):
        raise ConfigError("euclidean_prune takes exactly one of ratio or threshold")
    groups = _select(
        find_groups(model, example if example is not None else example_input(model)), layers
    )
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
    return MaskedPruning(model, groups)
