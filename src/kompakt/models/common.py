"""Small building blocks shared by the zoo."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, padding: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def pooled_size(size: int, pools: int) -> int:
    """Spatial size after `pools` MaxPool(3, stride 2, padding 1) layers: ceil(size / 2) each."""
    for _ in range(pools):
        size = (size + 1) // 2
    return size


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (e.g. "features.3") with `new`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
