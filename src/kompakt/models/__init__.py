"""The model zoo (a registry) and compression surgery for any nn.Module."""

from kompakt.models import classic, garipov, meta_family  # noqa: F401  (registers the builders)
from kompakt.models.registry import MODELS, build_model
from kompakt.models.surgery import (
    CompressionReport,
    MetaHeadConfig,
    TTConfig,
    apply_layer_specs_,
    compress_,
    layer_specs,
)
from kompakt.search import space as _search_space  # noqa: F401  (registers "searched")

__all__ = [
    "MODELS",
    "CompressionReport",
    "MetaHeadConfig",
    "TTConfig",
    "apply_layer_specs_",
    "build_model",
    "compress_",
    "layer_specs",
]
