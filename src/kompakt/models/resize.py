"""Resize records: the sizes of a pruned model's convs, BatchNorms and linears, stored in its
checkpoint so the architecture change reloads without pickled code; and the exact resizers."""

from __future__ import annotations

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.models.common import set_submodule


def resize_conv(conv: nn.Conv2d, out_keep=None, in_keep=None) -> nn.Conv2d:
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    new = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_keep] if out_keep is not None else conv.bias)
    new.train(conv.training)
    return new


def resize_bn(bn: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        len(keep),
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=bn.weight.device if bn.affine else None,
    )
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


def resize_linear(linear: nn.Linear, keep_features) -> nn.Linear:
    new = nn.Linear(
        len(keep_features),
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, keep_features])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    new.train(linear.training)
    return new


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
            records.append(
                {
                    "name": name,
                    "type": "Linear",
                    "args": {
                        "in_features": m.in_features,
                        "out_features": m.out_features,
                        "bias": m.bias is not None,
                    },
                }
            )
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
            set_submodule(model, record["name"], fresh)
    return model
