"""The model zoo (a registry), compression surgery for any nn.Module, checkpoints and the
resize records of pruned models."""

from kompakt.compression import MetaHeadConfig, TTConfig, parse_compression
from kompakt.models import classic, garipov, meta_family, searched  # noqa: F401  (registers)
from kompakt.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from kompakt.models.common import set_submodule
from kompakt.models.registry import MODELS, build_model
from kompakt.models.surgery import (
    CompressionReport,
    apply_layer_specs_,
    compress_,
    densify_,
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
    "densify_",
    "layer_specs",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "parse_compression",
    "save_checkpoint",
    "set_submodule",
]
