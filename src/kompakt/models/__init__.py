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
