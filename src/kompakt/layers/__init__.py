"""Compressed layers: TT linear/conv, Meta, grouped heads, Conv3d over channels.

Every layer is an `nn.Module` registered in `LAYERS`, has `to_dense()` returning its exact dense
twin, and reports its compression ratio against that twin in `extra_repr`.
"""

from kompakt.layers.channel_conv3d import ChannelConv3d
from kompakt.layers.meta import GroupedLinear, Meta, MetaHead
from kompakt.layers.registry import LAYERS
from kompakt.layers.tt_conv import TTConv2d
from kompakt.layers.tt_linear import TTLinear

__all__ = ["LAYERS", "ChannelConv3d", "GroupedLinear", "Meta", "MetaHead", "TTConv2d", "TTLinear"]
