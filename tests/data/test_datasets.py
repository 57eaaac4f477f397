import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from kompakt.data import DATASETS, load_dataset
from kompakt.errors import DataError


@pytest.mark.parametrize(
    "name, shape, classes, sizes",
    [
        ("digits", (1, 8, 8), 10, {"train": 1257, "val": 270, "test": 270}),
        ("boston", (13, 1, 1), 1, {"train": 354, "val": 76, "test": 76}),
        ("mnist5k", (1, 28, 28), 10, {"train": 3500, "val": 750, "test": 750}),
        ("synthetic", (1, 8, 8), 4, {"train": 420, "val": 90, "test": 90}),
    ],
)
def test_embedded_datasets_have_fixed_documented_splits(name, shape, classes, sizes):
    data = load_dataset(name)
    assert data.info.input_shape == shape and data.info.num_classes == classes
    assert data.info.sizes == sizes
    assert {k: len(v) for k, v in data.x.items()} == sizes
    again = load_dataset(name)
    assert torch.equal(data.y["test"], again.y["test"])  # seeded: the same split every time
    assert abs(data.x["train"].mean().item()) < 1e-3  # normalised with train statistics


CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def write_cifar(folder, n=6, labels=None, truncate=False, data=None, protocol=2):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for name in CIFAR_FILES:
        batch = {
            b"data": data if data is not None else rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            b"labels": list(labels if labels is not None else rng.integers(0, 10, n)),
        }
        raw = pickle.dumps(batch, protocol=protocol)
        (folder / name).write_bytes(raw[: len(raw) // 2] if truncate else raw)
    names = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(names))


def test_cifar10_from_python_batches(tmp_path):
    write_cifar(tmp_path / "cifar")
    data = load_dataset("cifar10", root=str(tmp_path / "cifar"))
    assert data.info.input_shape == (3, 32, 32)
    assert data.info.class_names[3] == "c3"
    assert data.info.sizes["test"] == 6 and data.info.sizes["train"] + data.info.sizes["val"] == 30


def test_cifar10_truncated_batch_names_the_file(tmp_path):
    write_cifar(tmp_path / "cifar", truncate=True)
    with pytest.raises(DataError, match=r"data_batch_1.*truncated or corrupt"):
        load_dataset("cifar10", root=str(tmp_path / "cifar"))


def test_cifar10_labels_out_of_range(tmp_path):
    write_cifar(tmp_path / "cifar", labels=[0, 1, 2, 3, 4, 12])
    with pytest.raises(DataError, match=r"data_batch_1 has labels outside 0\.\.9"):
        load_dataset("cifar10", root=str(tmp_path / "cifar"))


def test_cifar10_needs_every_official_batch_and_ignores_other_names(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_1.bak").write_bytes(b"editor backup")
    assert load_dataset("cifar10", root=str(tmp_path / "c")).info.sizes["test"] == 6
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path / "c"))


def test_cifar10_float_pixels_are_refused_not_cast_to_black(tmp_path):
    write_cifar(tmp_path / "c", data=np.random.default_rng(0).random((6, 3072)))
    with pytest.raises(DataError, match=r"data_batch_1 holds float64 pixels"):
        load_dataset("cifar10", root=str(tmp_path / "c"))


def test_cifar10_pickle_protocol_5_is_read_by_the_restricted_unpickler(tmp_path):
    write_cifar(tmp_path / "c", protocol=5)
    assert load_dataset("cifar10", root=str(tmp_path / "c")).info.input_shape == (3, 32, 32)
    evil = pickle.dumps({b"data": __import__("os").system, b"labels": []})
    (tmp_path / "c" / "data_batch_2").write_bytes(evil)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", root=str(tmp_path / "c"))


def write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets(tmp_path, gz, name):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), gz)
    data = load_dataset(name, root=str(tmp_path))
    assert data.info.input_shape == (1, 28, 28) and data.info.sizes["test"] == 5
    if name == "fashion-mnist":
        assert data.info.class_names[9] == "Ankle boot"


def test_idx_truncated_file(tmp_path):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (4, 28, 28)), False
        )
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, 4), False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_dataset("mnist", root=str(tmp_path))


def test_idx_corrupt_gzip_and_bad_labels_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (4, 8, 8)), True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array([0, 1, 2, 77]), True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz has label 77"):
        load_dataset("mnist", root=str(tmp_path))
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20] + b"\xff" * 40)
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("mnist", root=str(tmp_path))


def test_imagefolder_skips_hidden_folders_and_refuses_empty_classes(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog", ".ipynb_checkpoints"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (6, 6), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    assert load_dataset("imagefolder", root=str(tmp_path)).info.class_names == ("cat", "dog")
    (tmp_path / "emu").mkdir()
    with pytest.raises(DataError, match=r"\['emu'\] .* hold no images"):
        load_dataset("imagefolder", root=str(tmp_path))
    data = load_dataset("imagefolder", root=str(tmp_path), allow_empty_classes=True)
    assert data.info.class_names == ("cat", "dog", "emu")


def test_imagefolder_and_mixed_sizes(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset("imagefolder", root=str(tmp_path))
    assert data.info.class_names == ("cat", "dog") and data.info.input_shape == (3, 10, 10)
    Image.new("RGB", (12, 10)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 12x10x3 but .* is 10x10x3"):
        load_dataset("imagefolder", root=str(tmp_path))


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagefolder"])
def test_missing_directory(tmp_path, name):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(name, root=str(tmp_path / "nowhere"))


def test_registry_lists_every_format():
    assert {
        "digits",
        "mnist5k",
        "boston",
        "cifar10",
        "mnist",
        "fashion-mnist",
        "imagefolder",
        "synthetic",
    } <= set(DATASETS.names())
