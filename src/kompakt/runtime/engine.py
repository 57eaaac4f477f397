"""`Engine`: load a bundle and run it. Imports numpy and the chosen backend only (never torch).

engine = kompakt.runtime.load("bundle/")
logits = engine.run(batch)                  # (N, C, H, W) float32 -> (N, classes)
labels = engine.predict([image_uint8_hwc])  # preprocessing from the bundle
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kompakt.errors import (
    BackendUnavailable,
    ConfigError,
    KompaktError,
    ShapeError,
)
from kompakt.measure import class_scores
from kompakt.runtime import golden
from kompakt.runtime.backends import RUNNERS, EngineFiles
from kompakt.runtime.cpu import check_int8_bundle
from kompakt.runtime.files import check_file
from kompakt.runtime.identity import check_expected, check_requirements, identity
from kompakt.runtime.manifest import BundleError, PinnedDirectory, read_checked, read_manifest
from kompakt.runtime.preprocessing import Preprocessing

__all__ = ["RUNNERS", "BackendUnavailable", "Engine", "load"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or a string for a dynamic axis
    dtype: np.dtype


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float
    top_k: list[tuple[str, float]]


def _spec(entry: dict) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else str(d) for d in entry["shape"])
    try:
        dtype = np.dtype(entry["dtype"])
    except TypeError:
        raise BundleError(
            f"manifest tensor {entry['name']!r} has unknown dtype {entry['dtype']!r}"
        ) from None
    return TensorSpec(entry["name"], shape, dtype)


class Engine:
    """A loaded bundle. `run` is safe to call from many threads at once."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str | None = None,
        threads: int | None = None,
        reject_nan: bool = False,
        trusted_keys: list[str] | None = None,
        tuning: dict | None = None,
        expect: str | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        if self.bundle.is_symlink():
            raise BundleError(f"{self.bundle}: the bundle must not be a symlink")
        self._pin = PinnedDirectory(self.bundle)
        self.root = self._pin.path  # every file is read through here (see PinnedDirectory)
        try:
            self._open(backend, threads, reject_nan, trusted_keys, tuning or {}, expect)
        except BaseException:
            self._pin.close()
            raise

    def _open(self, backend, threads, reject_nan, trusted_keys, tuning, expect) -> None:
        # signature, schema, limits and directory checked; files hashed below, each read once
        self.manifest = read_manifest(
            self.root, verify=False, trusted_keys=trusted_keys, pinned=True
        )
        check_expected(self.manifest, expect)
        check_requirements(self.manifest)
        self.backend = backend or self.manifest["backend"]
        self.inputs = [_spec(e) for e in self.manifest["inputs"]]
        self.outputs = [_spec(e) for e in self.manifest["outputs"]]
        self.class_names = list(self.manifest["class_names"])
        self.max_batch = self.manifest.get("max_batch")
        self.reject_nan = reject_nan
        artefact = self.manifest["artifact"]  # read_manifest checked it is listed
        check_int8_bundle(self.manifest)  # before any kernel runs: refuse, never compute wrong
        runner = RUNNERS.get(self.backend)
        tuning = {k: v for k, v in tuning.items() if v is not None}
        unsupported = sorted(set(tuning) - set(getattr(runner, "tuning", ())))
        if unsupported:
            raise ConfigError(
                f"the {self.backend} runtime has no {', '.join(unsupported)} setting; drop it "
                f"(it supports: {', '.join(getattr(runner, 'tuning', ())) or 'threads only'})"
            )
        # read once, hashed from these bytes, handed to the backend as bytes: what was checked
        # (and signed) is what runs, whatever happens to the directory meanwhile
        files = self.manifest["files"]
        names = [artefact, *[n for n in self.manifest.get("artifact_files", []) if n != artefact]]
        contents = {files[n]["path"]: read_checked(self.root, files[n]) for n in names}
        for name in set(files) - set(names):  # the rest (golden samples, caches) hashed too
            check_file(self.root, files[name])
        try:
            loaded = EngineFiles(self.root, files[artefact]["path"], contents)
            self._runner = runner(loaded, self.manifest, threads, **tuning)
        except KompaktError:
            raise
        except Exception as error:  # the SDK's own message, on one line, naming the file
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise BundleError(
                f"the {self.backend} backend cannot load {files[artefact]['path']}: {first}; "
                "rebuild the bundle with kompakt deploy"
            ) from None

    @property
    def identity(self) -> dict:
        """{"name", "version", "digest"}: what this bundle is (signed with the manifest)."""
        return identity(self.manifest)

    @property
    def runner(self):
        """The backend runner (measurement tools read device memory and timing from it)."""
        return self._runner

    # -- inference ----------------------------------------------------------------------------

    def _validate(self, x: np.ndarray) -> None:
        spec = self.inputs[0]
        if not isinstance(x, np.ndarray):
            raise ShapeError(f"expected a numpy array for {spec.name!r}, got {type(x).__name__}")
        if x.dtype != spec.dtype:
            raise ShapeError(
                f"input {spec.name!r} must be {spec.dtype}, got {x.dtype} (use x.astype("
                f"np.{spec.dtype}))"
            )
        if x.ndim != len(spec.shape):
            raise ShapeError(
                f"input {spec.name!r} must have rank {len(spec.shape)} {spec.shape}, got shape "
                f"{x.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, x.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise ShapeError(
                    f"input {spec.name!r} axis {axis} must be {want} (expected {spec.shape}), "
                    f"got shape {x.shape}"
                )
        if x.ndim and x.shape[0] < 1:
            raise ShapeError(f"input {spec.name!r} has an empty batch (shape {x.shape})")
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise ShapeError(
                f"batch {x.shape[0]} is above this engine's max batch {self.max_batch}; split it"
            )
        if self.reject_nan and not np.isfinite(x).all():
            raise ShapeError(f"input {spec.name!r} contains NaN or infinite values")

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch (N, C, H, W) float32."""
        if self._runner is None:
            raise KompaktError("this engine is closed")
        self._validate(x)
        return self._runner.run(np.ascontiguousarray(x))

    @property
    def preprocessing(self) -> Preprocessing:
        """The bundle's preprocessing (the same function calibration and validation used)."""
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Raw images (each (H, W) or rank 3 in the bundle's layout, usually uint8 HWC) to the
        float32 NCHW batch the model takes."""
        shape = self.inputs[0].shape
        if len(shape) != 4:
            raise ShapeError(f"preprocess needs an image model (N, C, H, W), not {shape}")
        _, channels, height, width = shape
        fixed = isinstance(height, int) and not self.manifest["preprocessing"].get(
            "fully_convolutional", False
        )
        return self.preprocessing.apply(
            images,
            channels if isinstance(channels, int) else None,
            (height, width) if fixed else None,
        )

    def predict(
        self, images: Sequence[np.ndarray] | np.ndarray, top_k: int = 5, allow_nonfinite=False
    ) -> list[Prediction]:
        """Classify raw images with the bundle's preprocessing.

        Args:
            images: raw images (see `preprocess`).
            top_k: how many (label, probability) pairs each Prediction lists (>= 1).
            allow_nonfinite: NaN / Inf pixels are refused by default (INT8 and OpenVINO engines
                turn them into confident labels); True passes them through, and rows whose
                scores are not finite are still refused rather than reported.

        Raises:
            ShapeError: bad images, non-finite inputs, or an output that is not finite.
            ConfigError: top_k < 1.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
        if self.manifest.get("task") == "regression":
            raise ConfigError("predict classifies; this bundle is a regression model: use run()")
        x = self.preprocess(images)
        if not allow_nonfinite and not np.isfinite(x).all():
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(x))[0]})
            raise ShapeError(
                f"image(s) {bad} contain NaN or infinite values; fix the input (or pass "
                "allow_nonfinite=True to run them anyway)"
            )
        step = self.max_batch or len(x)  # more images than the engine takes: in chunks
        logits = class_scores(
            np.concatenate([self.run(x[i : i + step]) for i in range(0, len(x), step)])
        )  # FCN maps are averaged
        if not np.isfinite(logits).all():
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(logits))[0]})
            raise ShapeError(f"the model produced non-finite scores for image(s) {bad}")
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probs = exp / exp.sum(1, keepdims=True)
        names = self.class_names or [str(i) for i in range(probs.shape[1])]
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append(
                Prediction(
                    int(order[0]),
                    names[order[0]],
                    float(row[order[0]]),
                    [(names[j], float(row[j])) for j in order],
                )
            )
        return out

    def verify(self) -> dict:
        """Re-run the bundle's golden samples here and compare with the build's FP32 outputs.

        Returns:
            {"ok", "max_abs", "max_rel", "top1_agreement", "samples", "built", "tolerance"};
            `ok` is False when the drift exceeds the tolerance recorded at build time.

        Raises:
            BundleError: the bundle carries no golden samples (built by an older kompakt).
        """
        record = self.manifest.get("golden")
        if not record:
            raise BundleError(
                f"{self.bundle} has no golden samples (built before kompakt recorded them); "
                "rebuild it with kompakt deploy to verify it"
            )
        return golden.check(self, record)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        self._pin.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    bundle: str | Path,
    backend: str | None = None,
    threads: int | None = None,
    reject_nan: bool = False,
    verify: bool = False,
    trusted_keys: list[str] | None = None,
    tuning: dict | None = None,
    expect: str | None = None,
) -> Engine:
    """Load a bundle directory (hashes verified first) and return its Engine.

    Args:
        verify: also re-run the golden samples and refuse (GoldenDriftError) when the outputs
            here drift from the build's beyond the recorded tolerance.
        trusted_keys: Ed25519 public keys (base64 or key files); when given (or set in
            $KOMPAKT_TRUSTED_KEYS) the bundle must carry a valid signature by one of them.
        tuning: runtime settings beyond threads, e.g. {"spin": False, "inter_op_threads": 1}
            (a runner declares the ones it has; others are refused, never ignored).
        expect: the bundle this app wants: "NAME", "NAME@VERSION", "NAME@>=VERSION" (refuses
            a rollback) or "sha256:DIGEST" (see kompakt.runtime.identity); binding only for a
            signed bundle loaded with trusted keys.
    """
    engine = Engine(bundle, backend, threads, reject_nan, trusted_keys, tuning, expect)
    if verify:
        result = engine.verify()
        if not result["ok"]:
            engine.close()
            raise golden.GoldenDriftError(
                f"{bundle}: {golden.describe(result)}; this machine computes this bundle "
                "differently from the build machine: rebuild it here (kompakt deploy)"
            )
    return engine
