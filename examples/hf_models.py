"""Hugging Face `transformers` image models as kompakt models: random weights from a config (no
download), sized for the data at hand, returning logits. Use them like any user model:

    kompakt train --model examples/hf_models.py:resnet --data mnist5k --epochs 3 --out runs/r18
    kompakt compress runs/r18/best.pt --ratio 10 -o runs/r18-tt

`width` scales the channels (1.0: the published size); tests use small widths at 32x32.
"""

from __future__ import annotations

from torch import nn


class Logits(nn.Module):
    """`model(pixel_values=x).logits` as a plain tensor function (what export and bench call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _scaled(values, width: float) -> list[int]:
    return [max(8, round(v * width / 8) * 8) for v in values]


def resnet(num_classes: int, in_channels: int, image_size: int, depth: int = 18, width=1.0):
    """ResNet-18 (basic blocks) or -50 (bottlenecks)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    hidden = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    config = ResNetConfig(
        num_channels=in_channels,
        embedding_size=_scaled([64], width)[0],
        hidden_sizes=_scaled(hidden, width),
        depths=layers,
        layer_type="basic" if depth < 50 else "bottleneck",
        num_labels=num_classes,
    )
    return Logits(ResNetForImageClassification(config))


def mobilenet_v2(num_classes: int, in_channels: int, image_size: int, width=1.0):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(
        num_channels=in_channels,
        image_size=image_size,
        depth_multiplier=width,
        num_labels=num_classes,
    )
    return Logits(MobileNetV2ForImageClassification(config))


def vit(num_classes: int, in_channels: int, image_size: int, width=1.0, patch: int = 4):
    """ViT-tiny-like: 12 layers, 192 wide at width 1 (Linear-heavy: TT on the MLP blocks)."""
    from transformers import ViTConfig, ViTForImageClassification

    hidden = _scaled([192], width)[0]
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch,
        num_channels=in_channels,
        hidden_size=hidden,
        num_hidden_layers=max(2, int(12 * width)),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        num_labels=num_classes,
    )
    return Logits(ViTForImageClassification(config))


def convnext(num_classes: int, in_channels: int, image_size: int, width=1.0):
    """ConvNeXt-tiny-like (depths 3-3-9-3, widths 96..768)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_channels=in_channels,
        hidden_sizes=_scaled([96, 192, 384, 768], width),
        depths=[3, 3, 9, 3] if width >= 1 else [1, 1, 2, 1],
        num_labels=num_classes,
    )
    return Logits(ConvNextForImageClassification(config))
