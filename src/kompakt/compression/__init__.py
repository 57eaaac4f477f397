"""Compression methods as registered objects (`COMPRESSIONS`): Tensor-Train, MetaHead and filter
pruning are built in; a plugin registers its own `Compression` and is then reachable from
`compress_`, `kompakt compress --method`, `--compress NAME:...` and `kompakt optimize`."""

from kompakt.compression.base import (
    COMPRESSIONS,
    Compression,
    Replacement,
    compression_for,
    name_of,
    parse_compression,
)
from kompakt.compression.meta import MetaHeadConfig
from kompakt.compression.prune import PruneConfig
from kompakt.compression.tt import TTConfig

__all__ = [
    "COMPRESSIONS",
    "Compression",
    "MetaHeadConfig",
    "PruneConfig",
    "Replacement",
    "TTConfig",
    "compression_for",
    "name_of",
    "parse_compression",
]
