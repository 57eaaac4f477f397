"""Datasets (a registry): embedded real defaults, user file formats, synthetic."""

from kompakt.data import builtin, files  # noqa: F401  (registers the loaders)
from kompakt.data.base import DATASETS, DataInfo, DataSplits, load_dataset

__all__ = ["DATASETS", "DataInfo", "DataSplits", "load_dataset"]
