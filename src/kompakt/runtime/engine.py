"""`Engine`: load a bundle and run it. Imports numpy and the chosen backend only (never torch).

engine = kompakt.runtime.load("bundle/")
logits = engine.run(batch)                  # (N, C, H, W) float32 -> (N, classes)
labels = engine.predict([image_uint8_hwc])  # preprocessing from the bundle
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kompakt.errors import KompaktError, ShapeError
from kompakt.registry import Registry
from kompakt.runtime.cpu import check_int8_bundle
from kompakt.runtime.manifest import BundleError, confined, read_manifest

RUNNERS: Registry = Registry("runtime backend")


class BackendUnavailableError(KompaktError):
    """The backend's package or device is missing here."""


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


# -- backend runners --------------------------------------------------------------------------


class OnnxRuntimeRunner:
    """ONNX Runtime with one execution provider (CPU, CUDA or TensorRT); thread-safe `run`."""

    providers: tuple = ("CPUExecutionProvider",)

    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = self.provider_list(manifest)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        active = self.session.get_providers()
        if active[0] != wanted:  # ORT only warns and falls back to the CPU
            raise BackendUnavailableError(
                f"{wanted} is not active (ONNX Runtime fell back to {active}); install "
                "onnxruntime-gpu with CUDA (pip install 'kompakt[gpu]') on a GPU machine"
            )
        self.input_name = self.session.get_inputs()[0].name

    def provider_list(self, manifest: dict) -> list:
        return list(self.providers)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


RUNNERS.register("onnxruntime", help="ONNX Runtime, CPU execution provider")(OnnxRuntimeRunner)


@RUNNERS.register("onnxruntime-cuda", help="ONNX Runtime, CUDA execution provider")
class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    def provider_list(self, manifest: dict) -> list:
        options = manifest.get("backend_options", {}).get("provider_options", {})
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


@RUNNERS.register("onnxruntime-tensorrt", help="ONNX Runtime, TensorRT execution provider")
class OnnxRuntimeTensorrtRunner(OnnxRuntimeRunner):
    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        self.bundle = path.parent
        super().__init__(path, manifest, threads)

    def provider_list(self, manifest: dict) -> list:
        options = dict(manifest.get("backend_options", {}).get("provider_options", {}))
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if key in options:  # caches live inside the bundle
                options[key] = str(confined(self.bundle, options[key]))
        return [
            ("TensorrtExecutionProvider", options),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]


@RUNNERS.register("openvino", help="OpenVINO IR on the CPU device")
class OpenVinoRunner:
    """One compiled model; one infer request per thread (requests are not thread-safe)."""

    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError(
                "openvino is not installed: pip install 'kompakt[openvino]'"
            ) from None
        core = ov.Core()
        config: dict = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if manifest.get("precision") == "fp32":
            # the CPU plugin computes in bf16 where the CPU has it, unless told otherwise
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.local = threading.local()

    def run(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self.compiled = None


@RUNNERS.register("tensorrt", help="a native TensorRT engine (plan) on a CUDA GPU")
class TensorRTRunner:
    """Deserialises the plan; refuses one built for another GPU or TensorRT version."""

    def __init__(self, path: Path, manifest: dict, threads: int | None) -> None:
        from kompakt.runtime.tensorrt import TensorRTEngineRunner

        self.inner = TensorRTEngineRunner(path, manifest)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run(x)

    def close(self) -> None:
        self.inner.close()


# -- the engine -------------------------------------------------------------------------------


def _spec(entry: dict) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else str(d) for d in entry["shape"])
    return TensorSpec(entry["name"], shape, np.dtype(entry["dtype"]))


class Engine:
    """A loaded bundle. `run` is safe to call from many threads at once."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str | None = None,
        threads: int | None = None,
        reject_nan: bool = False,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        self.backend = backend or self.manifest["backend"]
        self.inputs = [_spec(e) for e in self.manifest["inputs"]]
        self.outputs = [_spec(e) for e in self.manifest["outputs"]]
        self.class_names = list(self.manifest["class_names"])
        self.max_batch = self.manifest.get("max_batch")
        self.reject_nan = reject_nan
        entry = self.manifest["files"].get(self.manifest["artifact"])
        if entry is None:
            raise BundleError(f"manifest artifact {self.manifest['artifact']!r} is not in files")
        check_int8_bundle(self.manifest)  # before any kernel runs: refuse, never compute wrong
        runner = RUNNERS.get(self.backend)
        self._runner = runner(confined(self.bundle, entry["path"]), self.manifest, threads)

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

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 HWC (or HW) images, or float CHW in [0, 1], to a normalised float32 batch."""
        pre = self.manifest["preprocessing"]
        _, channels, height, width = self.inputs[0].shape
        mean = np.asarray(pre["mean"], np.float32).reshape(-1, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(-1, 1, 1)
        batch = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype == np.uint8:
                image = image[:, :, None] if image.ndim == 2 else image
                chw = image.transpose(2, 0, 1).astype(np.float32) * pre["pixel_scale"]
            elif image.ndim == 3 and np.issubdtype(image.dtype, np.floating):
                chw = image.astype(np.float32)
            else:
                raise ShapeError(
                    f"image {i}: expected uint8 HxWxC / HxW or float CxHxW, got {image.dtype} "
                    f"{image.shape}"
                )
            if isinstance(channels, int) and chw.shape[0] != channels:
                raise ShapeError(f"image {i}: expected {channels} channels, got {chw.shape[0]}")
            size_fixed = isinstance(height, int) and not pre["fully_convolutional"]
            if size_fixed and chw.shape[1:] != (height, width):
                raise ShapeError(
                    f"image {i} is {chw.shape[2]}x{chw.shape[1]} but the model takes "
                    f"{width}x{height}; resize it first (kompakt does not resize: the model is "
                    "not fully convolutional)"
                )
            batch.append((chw - mean) / std)
        return np.stack(batch).astype(np.float32)

    def predict(self, images: list[np.ndarray], top_k: int = 5) -> list[Prediction]:
        """Classify raw images with the bundle's preprocessing."""
        logits = self.run(self.preprocess(images))
        logits = logits.reshape(logits.shape[0], logits.shape[1], -1).mean(-1)  # FCN maps
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probs = exp / exp.sum(1, keepdims=True)
        names = self.class_names or [str(i) for i in range(probs.shape[1])]
        out = []
        for row in probs:
            order = np.argsort(-row)[:top_k]
            out.append(
                Prediction(
                    int(order[0]),
                    names[order[0]],
                    float(row[order[0]]),
                    [(names[j], float(row[j])) for j in order],
                )
            )
        return out

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    bundle: str | Path,
    backend: str | None = None,
    threads: int | None = None,
    reject_nan: bool = False,
) -> Engine:
    """Load a bundle directory (hashes verified first) and return its Engine."""
    return Engine(bundle, backend, threads, reject_nan)
