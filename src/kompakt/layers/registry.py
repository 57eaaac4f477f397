"""The layer registry (separate module so every layer file can register without import cycles)."""

from torch import nn

from kompakt.registry import Registry

LAYERS: Registry[type[nn.Module]] = Registry("layer")
