"""FC-to-conv (CS231n, CS231n notes): a Flatten -> Linear head becomes convolutions.

The first Linear after the Flatten becomes a Conv2d whose kernel covers the whole feature map it
used to flatten; every following Linear becomes a 1x1 Conv2d. At the training size the output is
(N, classes, 1, 1) and equals the original logits; on a larger image the classifier slides over
it in one pass and returns a spatial map of class scores.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.layers import CompressedLayer

ELEMENTWISE = (nn.ReLU, nn.Dropout, nn.Identity, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.Tanh)


def _find_head(model: nn.Module) -> tuple[nn.Sequential, int]:
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i, child in enumerate(children[:-1]):
            if isinstance(child, nn.Flatten) and _linear_like(children[i + 1]):
                return module, i
    raise ConfigError(
        "fc_to_conv needs an nn.Sequential holding nn.Flatten followed by nn.Linear (the "
        "classifier head); this model flattens some other way or has no FC head"
    )


def _linear_like(module: nn.Module) -> bool:
    """nn.Linear, or a compressed layer whose dense twin is one (TTLinear, MetaHead...)."""
    return isinstance(module, nn.Linear) or (
        isinstance(module, CompressedLayer) and module.dense_type is nn.Linear
    )


def fc_to_conv(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of `model` whose Flatten -> Linear... head is made of convolutions.

    Raises:
        ConfigError: if the model has no such head or the head holds layers other than
            Linear / TTLinear and element-wise activations or dropout.
    """
    model = copy.deepcopy(model).eval()
    head, flat_index = _find_head(model)
    seen: dict[str, torch.Size] = {}
    hook = head[flat_index].register_forward_pre_hook(
        lambda mod, args: seen.__setitem__("shape", args[0].shape)
    )
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    hook.remove()
    _, channels, height, width = seen["shape"]
    first = True
    for i in range(flat_index + 1, len(head)):
        layer = head[i]
        if isinstance(layer, CompressedLayer) and layer.dense_type is nn.Linear:
            layer = layer.to_dense()
        if isinstance(layer, nn.Linear):
            kernel = (height, width) if first else (1, 1)
            in_channels = channels if first else layer.in_features
            conv = nn.Conv2d(in_channels, layer.out_features, kernel, bias=layer.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(layer.weight.reshape(layer.out_features, in_channels, *kernel))
                if layer.bias is not None:
                    conv.bias.copy_(layer.bias)
            head[i] = conv
            first = False
        elif not isinstance(layer, ELEMENTWISE):
            raise ConfigError(
                f"fc_to_conv cannot convert {type(layer).__name__} in the head; it handles "
                "Linear (or compressed linears) with element-wise activations and dropout between "
                "them"
            )
    head[flat_index] = nn.Identity()
    return model
