"""What every dataset loader returns: three splits plus the facts that travel into checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from kompakt.errors import DataError
from kompakt.registry import Registry

DATASETS: Registry = Registry("dataset")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataInfo:
    """Facts about a dataset that the model, the checkpoint and the runtime need.

    `mean`/`std` are per-channel statistics of the train split in the [0, 1] pixel scale (for
    tabular data: per feature); inputs are normalised as (x - mean) / std.
    """

    name: str
    task: str  # "classification" or "regression"
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 1 for regression
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["class_names"] = list(self.class_names)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DataInfo:
        return cls(
            name=data["name"],
            task=data["task"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            class_names=tuple(data.get("class_names", ())),
            mean=tuple(data.get("mean", ())),
            std=tuple(data.get("std", ())),
            sizes=dict(data.get("sizes", {})),
        )


@dataclass
class DataSplits:
    """Normalised float32 tensors per split: x (N, C, H, W), y (N,) int64 or float32."""

    info: DataInfo
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.x:
            raise DataError(f"split {name!r} does not exist; valid splits: {', '.join(self.x)}")
        return self.x[name], self.y[name]


def split_indices(
    n: int, seed: int, fractions: tuple[float, float] = (0.15, 0.15)
) -> dict[str, np.ndarray]:
    """A fixed, seeded permutation cut into train / val / test (val and test fractions given)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * fractions[0]), round(n * fractions[1])
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def make_splits(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    parts: dict[str, np.ndarray],
    task: str = "classification",
    class_names: tuple[str, ...] = (),
    scale: float = 255.0,
) -> DataSplits:
    """Normalise with train statistics and package the splits.

    Args:
        images: (N, C, H, W) raw values; divided by `scale` to reach [0, 1].
        labels: (N,) class indices, or targets for regression.
        parts: split name -> indices into images.
    """
    if images.ndim != 4:
        raise DataError(f"{name}: expected images (N, C, H, W), got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / scale)
    train = x[torch.from_numpy(parts["train"])]
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if task == "classification":
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        num_classes = len(class_names) if class_names else int(y.max()) + 1
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{name}: labels must be in 0..{num_classes - 1}, found {int(y.min())}.."
                f"{int(y.max())}"
            )
        class_names = class_names or tuple(str(i) for i in range(num_classes))
    else:
        y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        num_classes = 1
    info = DataInfo(
        name=name,
        task=task,
        input_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
        class_names=tuple(class_names),
        mean=tuple(round(v, 6) for v in mean.tolist()),
        std=tuple(round(v, 6) for v in std.tolist()),
        sizes={k: len(v) for k, v in parts.items()},
    )
    xs = {k: x[torch.from_numpy(v)].contiguous() for k, v in parts.items()}
    ys = {k: y[torch.from_numpy(v)].contiguous() for k, v in parts.items()}
    return DataSplits(info, xs, ys)


def load_dataset(name: str, root: str | None = None, **kwargs) -> DataSplits:
    """Load a registered dataset by name (`root` is the directory for file-based ones)."""
    loader = DATASETS.get(name)
    return loader(root=root, **kwargs)
