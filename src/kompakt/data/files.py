"""User data from files: CIFAR-10 python batches, MNIST / Fashion-MNIST IDX, image folders.

Nothing is ever downloaded; a missing or malformed file is a `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from kompakt.data.base import DATASETS, DataSplits, make_splits
from kompakt.errors import DataError

VAL_FRACTION = 0.1


def _root(root: str | None, name: str, expected: str) -> Path:
    if root is None:
        raise DataError(f"{name} reads local files: pass the directory holding {expected}")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{name}: directory {path} does not exist; expected it to hold {expected}")
    return path


def _train_val_test(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Carve a seeded validation split out of the official train split; keep the test split."""
    order = np.random.default_rng(seed).permutation(n_train)
    n_val = max(1, round(n_train * VAL_FRACTION))
    return {
        "train": order[n_val:],
        "val": order[:n_val],
        "test": np.arange(n_train, n_train + n_test),
    }


# -- CIFAR-10 ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Only what CIFAR batches contain (dicts, lists, bytes, numpy arrays): no code runs."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
            # pickle protocol 5 stores arrays as out-of-band buffers rebuilt by _frombuffer
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"cifar10: missing batch file {path}")
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        raw = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError) as e:
        raise DataError(
            f"cifar10: {path} is not a CIFAR-10 python batch (truncated or corrupt: {e})"
        ) from None
    # never cast silently: float pixels in 0..1 would become all-black uint8 images
    integer = np.issubdtype(raw.dtype, np.integer)
    if raw.dtype != np.uint8 and (not integer or raw.min() < 0 or raw.max() > 255):
        raise DataError(
            f"cifar10: {path} holds {raw.dtype} pixels in {raw.min()}..{raw.max()}; "
            "expected uint8 values 0..255"
        )
    data = raw.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer) or (
        labels.size and (labels.min() < 0 or labels.max() > 9)
    ):
        raise DataError(f"cifar10: {path} has labels outside 0..9 (or not integers)")
    labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"cifar10: {path} holds data {data.shape} and {len(labels)} labels; expected "
            "(N, 3072) uint8 and N labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


@DATASETS.register("cifar10", help="CIFAR-10 'python version' batch files in a directory")
def load_cifar10(root: str | None = None) -> DataSplits:
    folder = _root(root, "cifar10", "data_batch_1..5 and test_batch")
    # exactly the official names: a missing batch is an error, a backup copy is ignored
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    missing = [p.name for p in [*train_files, folder / "test_batch"] if not p.is_file()]
    if missing:
        raise DataError(
            f"cifar10: {folder} lacks {', '.join(missing)}; the python version has "
            "data_batch_1..data_batch_5 and test_batch"
        )
    batches = [_read_cifar_batch(p) for p in [*train_files, folder / "test_batch"]]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    n_test = len(batches[-1][0])
    names: tuple[str, ...] = ()
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            info = _CifarUnpickler(io.BytesIO(meta.read_bytes()), encoding="bytes").load()
            names = tuple(n.decode() for n in info[b"label_names"])
        except Exception as error:
            raise DataError(f"cifar10: cannot read {meta}: {error}") from None
    names = names or tuple(str(i) for i in range(10))
    parts = _train_val_test(len(images) - n_test, n_test)
    return make_splits("cifar10", images, labels, parts, class_names=names)


# -- MNIST IDX --------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip raises all three for bad data
        raise DataError(f"cannot read IDX file {path} (corrupt or truncated?): {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or padded: header says {dims} = {expected} bytes, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {stem}[.gz] in {folder}")


def _load_idx_set(name: str, root: str | None, class_names: tuple[str, ...]) -> DataSplits:
    folder = _root(root, name, "train/t10k -images-idx3-ubyte and -labels-idx1-ubyte files")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{name}: {prefix} images {images.shape} and labels {labels.shape} do not match"
            )
        if labels.size and labels.max() >= len(class_names):
            raise DataError(
                f"{name}: {_find(folder, f'{prefix}-labels-idx1-ubyte')} has label "
                f"{int(labels.max())}; expected 0..{len(class_names) - 1}"
            )
        arrays[split] = (images, labels)
    images = np.concatenate([arrays["train"][0], arrays["test"][0]])[:, None]
    labels = np.concatenate([arrays["train"][1], arrays["test"][1]]).astype(np.int64)
    parts = _train_val_test(len(arrays["train"][0]), len(arrays["test"][0]))
    return make_splits(name, images, labels, parts, class_names=class_names)


@DATASETS.register("mnist", help="MNIST IDX files (gzipped or not) in a directory")
def load_mnist(root: str | None = None) -> DataSplits:
    return _load_idx_set("mnist", root, tuple(str(i) for i in range(10)))


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@DATASETS.register("fashion-mnist", help="Fashion-MNIST IDX files (gzipped or not)")
def load_fashion_mnist(root: str | None = None) -> DataSplits:
    return _load_idx_set("fashion-mnist", root, FASHION_CLASSES)


# -- Image folders ----------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@DATASETS.register("imagefolder", help="one sub-directory per class, images read with Pillow")
def load_imagefolder(
    root: str | None = None, seed: int = 0, allow_empty_classes: bool = False
) -> DataSplits:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("imagefolder needs Pillow: `pip install 'kompakt[data]'`") from None
    folder = _root(root, "imagefolder", "one sub-directory of images per class")
    # hidden directories (.ipynb_checkpoints, .git) are never classes
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class sub-directories")
    empty = [
        c
        for c in classes
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (folder / c).iterdir())
    ]
    if empty and not allow_empty_classes:
        raise DataError(
            f"imagefolder: class folder(s) {empty} in {folder} hold no images; a class that never "
            "occurs cannot be learned (remove them, or pass allow_empty_classes=True)"
        )
    images, labels, first = [], [], None
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB" if img.mode not in ("L",) else "L"))
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(f"imagefolder: cannot read image {path}: {error}") from None
            array = array[:, :, None] if array.ndim == 2 else array
            if first is None:
                first = (path, array.shape)
            elif array.shape != first[1]:
                raise DataError(
                    f"imagefolder: {path} is {array.shape[1]}x{array.shape[0]}x{array.shape[2]} "
                    f"but {first[0]} is {first[1][1]}x{first[1][0]}x{first[1][2]}; all images "
                    "must share one size and mode (resize them first)"
                )
            images.append(array.transpose(2, 0, 1))
            labels.append(label)
    if len(images) < 3:
        raise DataError(f"imagefolder: found {len(images)} images in {folder}; need at least 3")
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = max(1, round(0.15 * len(images)))
    parts = {
        "test": order[:n_hold],
        "val": order[n_hold : 2 * n_hold],
        "train": order[2 * n_hold :],
    }
    return make_splits(
        "imagefolder", np.stack(images), np.array(labels), parts, class_names=tuple(classes)
    )
