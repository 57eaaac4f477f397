"""What every dataset loader returns: three splits plus the facts that travel into checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from kompakt.errors import DataError
from kompakt.registry import Registry
from kompakt.runtime.preprocessing import Preprocessing

DATASETS: Registry = Registry("dataset")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataInfo:
    """Facts about a dataset that the model, the checkpoint and the runtime need.

    `scale` takes raw values to [0, 1] (1/255 for 8-bit images); `mean`/`std` are per-channel
    statistics of the train split on that scale (for tabular data: per feature). Inputs are
    `self.preprocessing.normalize(raw)`, the function `kompakt.runtime` applies at inference.
    """

    name: str
    task: str  # "classification" or "regression"
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 1 for regression
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    sizes: dict[str, int] = field(default_factory=dict)
    scale: float = 1.0 / 255.0

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(mean=self.mean, std=self.std, scale=self.scale, layout="CHW")

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
            scale=float(data.get("scale", 1.0 / 255.0)),
        )


@dataclass
class DataSplits:
    """Normalised float32 tensors per split: x (N, C, H, W), y (N,) int64 or float32."""

    info: DataInfo
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # (N, C, H, W) as loaded

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
    train = np.asarray(images[parts["train"]], dtype=np.float64) / scale
    mean = [round(float(v), 6) for v in train.mean(axis=(0, 2, 3))]
    std = [round(max(float(v), 1e-6), 6) for v in train.std(axis=(0, 2, 3), ddof=1)]
    # the runtime's own function: training tensors equal what `predict` computes from raw pixels
    pre = Preprocessing(mean=tuple(mean), std=tuple(std), scale=1.0 / scale, layout="CHW")
    x = torch.from_numpy(pre.normalize(images))
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
        mean=pre.mean,
        std=pre.std,
        sizes={k: len(v) for k, v in parts.items()},
        scale=pre.scale,
    )
    xs = {k: x[torch.from_numpy(v)].contiguous() for k, v in parts.items()}
    ys = {k: y[torch.from_numpy(v)].contiguous() for k, v in parts.items()}
    raw = {k: np.ascontiguousarray(images[v]) for k, v in parts.items()}
    return DataSplits(info, xs, ys, raw)


def parse_dataset_spec(spec: str) -> tuple[str, dict]:
    """'synthetic:channels=3,image_size=32' -> ('synthetic', {'channels': 3, 'image_size': 32})."""
    name, _, rest = spec.partition(":")
    kwargs: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(
                f"dataset options are key=value after 'name:', got {item!r} in {spec!r}"
            )
        for cast in (int, float):
            try:
                kwargs[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key.strip()] = value
    return name, kwargs


def load_dataset(name: str, root: str | None = None, **kwargs) -> DataSplits:
    """Load a registered dataset by name (`root` is the directory for file-based ones).

    The name may carry options: `synthetic:channels=3,image_size=32` (e.g. to calibrate an RGB
    model on embedded data).
    """
    name, spec_kwargs = parse_dataset_spec(name)
    loader = DATASETS.get(name)
    try:
        return loader(root=root, **{**spec_kwargs, **kwargs})
    except TypeError as error:
        raise DataError(f"dataset {name!r}: {error}") from None
