"""The one preprocessing truth: raw pixels -> the float tensor the model was trained on.

x = (pixels * scale - mean) / std, per channel, laid out CHW. Training data, INT8 calibration,
validation, golden samples, `Engine.predict` and `kompakt bench --data` all go through
`Preprocessing.apply`, so what the bundle measured is what it computes for an app.
numpy only (kompakt.runtime never imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kompakt.errors import ConfigError, ShapeError

LAYOUTS = ("CHW", "HWC")


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs.

    Args:
        mean: per-channel mean on the scaled pixels (one value broadcasts to every channel).
        std: per-channel standard deviation on the scaled pixels.
        scale: multiplies the raw pixel values first (1/255 for 8-bit images, which every
            embedded image dataset uses; 1.0 for data already in [0, 1]).
        layout: "CHW" or "HWC" for the raw images `apply` receives as arrays of rank 3; the model
            input is always NCHW.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    layout: str = "HWC"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in np.atleast_1d(self.mean)))
        object.__setattr__(self, "std", tuple(float(v) for v in np.atleast_1d(self.std)))
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(
                f"preprocessing mean and std need the same non-zero length, got {len(self.mean)} "
                f"and {len(self.std)}"
            )
        if not all(np.isfinite(v) and v > 0 for v in self.std):
            raise ConfigError(f"preprocessing std must be finite and > 0, got {self.std}")
        if not all(np.isfinite(v) for v in self.mean):
            raise ConfigError(f"preprocessing mean must be finite, got {self.mean}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"preprocessing scale must be finite and > 0, got {self.scale}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"preprocessing layout must be one of {LAYOUTS}, got {self.layout!r}")

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> Preprocessing:
        """From a manifest / ONNX metadata dict; older records named the scale `pixel_scale`
        and defaulted mean 0 / std 1."""
        data = data or {}
        return cls(
            mean=tuple(data.get("mean") or (0.0,)),
            std=tuple(data.get("std") or (1.0,)),
            scale=float(data.get("scale", data.get("pixel_scale", 1.0 / 255.0))),
            layout=data.get("layout", "HWC") if data.get("layout") in LAYOUTS else "HWC",
        )

    def normalize(self, chw: np.ndarray) -> np.ndarray:
        """(N, C, H, W) or (C, H, W) raw values -> float32 model inputs."""
        x = np.asarray(chw, dtype=np.float32) * np.float32(self.scale)
        channels = x.shape[-3]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if len(mean) not in (1, channels):
            raise ShapeError(
                f"preprocessing has {len(mean)} channel statistics, the input has {channels} "
                "channels"
            )
        shape = (-1, 1, 1)
        return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)

    def apply(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        channels: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Raw images -> a float32 NCHW batch.

        Args:
            images: a list of images, each (H, W) or rank 3 in `layout`; or one stacked array
                (N, H, W) / (N, ...) in `layout`. Any real dtype (uint8 pixels usually).
            channels: the model's channel count, checked when given.
            size: the model's (H, W), checked when given (kompakt never resizes silently).

        Raises:
            ShapeError: an empty batch, an image of the wrong rank, channels or size.
        """
        if isinstance(images, np.ndarray):
            images = list(images) if images.ndim >= 3 else [images]
        elif not isinstance(images, Sequence) or isinstance(images, str | bytes):
            raise ShapeError(
                f"expected a list of images (numpy arrays), got {type(images).__name__}"
            )
        if len(images) == 0:
            raise ShapeError("expected at least one image, got an empty list")
        batch = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if not (np.issubdtype(image.dtype, np.number) and not np.iscomplexobj(image)):
                raise ShapeError(f"image {i}: expected real numbers, got dtype {image.dtype}")
            if image.ndim == 2:
                chw = image[None]
            elif image.ndim == 3:
                chw = image.transpose(2, 0, 1) if self.layout == "HWC" else image
            else:
                raise ShapeError(
                    f"image {i}: expected (H, W) or a rank-3 {self.layout} image, got shape "
                    f"{image.shape}"
                )
            if channels is not None and chw.shape[0] != channels:
                raise ShapeError(
                    f"image {i}: expected {channels} channel(s) in {self.layout} layout, got "
                    f"shape {image.shape}"
                )
            if size is not None and tuple(chw.shape[1:]) != tuple(size):
                raise ShapeError(
                    f"image {i} is {chw.shape[2]}x{chw.shape[1]} but the model takes "
                    f"{size[1]}x{size[0]}; resize it first (kompakt does not resize)"
                )
            batch.append(chw)
        try:
            stacked = np.stack(batch)
        except ValueError:
            raise ShapeError("images in one batch must all have the same shape") from None
        return self.normalize(stacked)
