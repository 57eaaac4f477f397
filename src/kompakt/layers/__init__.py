"""Compressed layers: TT linear/conv, Meta, grouped heads, Conv3d over channels.

Every layer is a `CompressedLayer` registered in `LAYERS` (init_args, dense_params, macs,
to_dense / from_dense, export forms) and reports its compression ratio in `extra_repr`.
"""

from kompakt.layers.base import CompressedLayer
from kompakt.layers.channel_conv3d import ChannelConv3d
from kompakt.layers.meta import GroupedLinear, Meta, MetaHead
from kompakt.layers.registry import LAYERS
from kompakt.layers.tt_conv import TTConv2d
from kompakt.layers.tt_linear import TTLinear


def _load_all_layer_modules() -> None:
    """Import every module of this package, so a new layer file registers itself."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_load_all_layer_modules()

__all__ = [
    "LAYERS",
    "ChannelConv3d",
    "CompressedLayer",
    "GroupedLinear",
    "Meta",
    "MetaHead",
    "TTConv2d",
    "TTLinear",
]
