"""The model registry and `build_model`."""

from __future__ import annotations

from torch import nn

from kompakt.errors import ConfigError
from kompakt.registry import Registry

MODELS: Registry = Registry("model")


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: object
) -> nn.Module:
    """Build a registered model for inputs (N, in_channels, image_size, image_size).

    Raises:
        NotFoundError: for an unknown name (lists the valid ones).
        ConfigError: for kwargs the builder does not take, or sizes it cannot handle.
    """
    builder = MODELS.get(name)
    try:
        model = builder(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
        )
    except TypeError as error:
        raise ConfigError(f"model {name!r}: {error}") from None
    model.kompakt_input_shape = (in_channels, image_size, image_size)  # for shape-aware tools
    return model
