"""`build_bundle`: ONNX -> a self-describing bundle directory an app loads with kompakt.runtime.

bundle/
  kompakt.json        manifest (schema in kompakt/runtime/manifest.schema.json): inputs/outputs,
                      preprocessing, class names, backend, precision, every file's sha256,
                      accuracy and parity measured at build time, tool versions, target machine
  model.onnx          the source graph (fp32)
  model.int8.onnx     the Q/DQ graph (int8) / model.fp16.onnx (fp16 for TensorRT paths)
  <artefact>          ORT-optimised model, OpenVINO IR, TensorRT plan, ...
Written into a temporary sibling directory and renamed into place; an existing bundle is
replaced only with force=True.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from kompakt import __version__, measure
from kompakt._io import atomic_write_text
from kompakt.deploy.builders import BACKENDS, BuildOptions, profile_batches
from kompakt.deploy.fp16 import convert_to_fp16
from kompakt.deploy.quantize import quantizable_nodes, quantize_int8
from kompakt.errors import ConfigError, KompaktError
from kompakt.machine import describe_machine, package_version
from kompakt.options import opt
from kompakt.runtime import golden
from kompakt.runtime.backends import RUNNERS, BackendUnavailable, EngineFiles, require
from kompakt.runtime.cpu import int8_isa
from kompakt.runtime.manifest import MANIFEST, SCHEMA_VERSION, sha256_file, validate_manifest
from kompakt.runtime.preprocessing import Preprocessing
from kompakt.runtime.signing import sign_manifest

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class DeployConfig:
    """The options of `kompakt deploy`; field names are the CLI option and TOML key names."""

    backend: str = opt("onnxruntime", "A name from `kompakt deploy --list-backends`.")
    precision: Literal["fp32", "fp16", "int8", "auto"] = opt(
        "fp32",
        "Engine precision; auto builds INT8 and keeps it only where it is faster than FP32 at "
        "every measured batch and within --max-accuracy-drop (default 1 point).",
    )
    calib_data: str | None = opt(
        None, "Dataset for INT8 calibration (train split) and validation; default: the model's."
    )
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    calib_samples: int = opt(256, "INT8 calibration samples.")
    calib_method: Literal["minmax", "entropy", "percentile"] = opt(
        "minmax", "INT8 calibration method."
    )
    int8_scheme: Literal["portable", "full-range"] = opt(
        "portable",
        "INT8 weights on CPU backends: portable (7-bit, exact on every CPU) or full-range "
        "(8-bit, faster on VNNI/AMX CPUs; refused at load on x86 CPUs without VNNI). GPU "
        "backends always use full 8-bit weights.",
    )
    max_accuracy_drop: float | None = opt(
        None, "INT8: keep sensitive layers in float until the drop (points) is within this."
    )
    eval_samples: int = opt(1000, "Validation samples for the recorded accuracy and parity.")
    ckpt: str | None = opt(None, "Checkpoint for PyTorch-vs-engine parity.")
    golden_samples: int = opt(
        golden.DEFAULT_SAMPLES, "Validation inputs stored with their FP32 outputs (kompakt verify)."
    )
    sign_key: str | None = opt(
        None, "Ed25519 private key (base64, or a file holding it) to sign the bundle with."
    )
    force: bool = opt(False, "Replace an existing bundle (only ever a kompakt bundle).")
    bundle_name: str | None = opt(
        None, "The bundle's name in its identity (default: the output folder's name)."
    )
    bundle_version: int | None = opt(
        None,
        "The bundle's version (an integer; default: the build time in seconds, so a rebuild is "
        "newer); apps refuse rollbacks with load(expect='NAME@>=N').",
    )

    def __post_init__(self) -> None:
        if self.precision not in (*PRECISIONS, "auto"):
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("calib_samples", "eval_samples", "golden_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.calib_method not in ("minmax", "entropy", "percentile"):
            raise ConfigError(
                f"calib_method must be minmax, entropy or percentile, got {self.calib_method!r}"
            )
        if self.int8_scheme not in ("portable", "full-range"):
            raise ConfigError(
                f"int8_scheme must be 'portable' or 'full-range', got {self.int8_scheme!r}"
            )
        if self.bundle_version is not None and (
            not isinstance(self.bundle_version, int) or self.bundle_version < 0
        ):
            raise ConfigError(
                f"bundle_version must be an integer >= 0, got {self.bundle_version!r}"
            )
        if self.bundle_name is not None and not re.fullmatch(r"[^@\s]{1,200}", self.bundle_name):
            raise ConfigError(
                f"bundle_name must be 1-200 characters without '@' or spaces, got "
                f"{self.bundle_name!r}"
            )

    def identity(self, out: Path) -> dict:
        """The manifest's `bundle` record (see kompakt.runtime.identity)."""
        name = self.bundle_name or re.sub(r"[@\s]", "-", out.name)[:200] or "bundle"
        version = int(time.time()) if self.bundle_version is None else self.bundle_version
        return {"name": name, "version": version}


def _tensor_entries(values) -> list[dict]:
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        entries.append(
            {
                "name": value.name,
                "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            }
        )
    return entries


def _metadata(model: onnx.ModelProto) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    out = {}
    out["task"] = props.get("task", "classification")
    for key in ("preprocessing", "class_names", "dataset", "tt_layers"):
        if key in props:
            try:
                out[key] = json.loads(props[key])
            except json.JSONDecodeError:
                out[key] = props[key]
    return out


def _splits(name: str | None, root: str | None, shape: list, meta: dict) -> dict | None:
    """(calibration = train split, evaluation = val split) arrays, or None without a dataset.

    The arrays are the dataset's raw images through the bundle's preprocessing (the function
    `Engine.predict` applies), so INT8 ranges and the recorded accuracy describe what apps feed.
    A model whose metadata records no preprocessing takes the dataset's (recorded in `meta`).
    """
    if not name:
        return None
    from kompakt.data import load_dataset

    data = load_dataset(name, root=root)
    if list(data.info.input_shape) != [d for d in shape[1:]]:
        raise ConfigError(
            f"dataset {name!r} has inputs {data.info.input_shape}, the model takes {shape[1:]}"
        )
    if isinstance(meta.get("preprocessing"), dict):
        pre = Preprocessing.from_dict(meta["preprocessing"])
    else:
        pre = data.info.preprocessing
        meta["preprocessing"] = pre.to_dict()
        meta["preprocessing_source"] = f"dataset {name!r} (the model records none)"
    pre = dataclasses.replace(pre, layout="CHW")  # the dataset's raw arrays are NCHW
    return {
        "train": pre.normalize(data.raw["train"]),
        "val": pre.normalize(data.raw["val"]),
        "val_labels": data.y["val"].numpy(),
        "task": data.info.task,
    }


def _versions() -> dict:
    packages = ("onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch")
    found = {package: package_version(package) for package in packages}
    return {"kompakt": __version__, **{k: v for k, v in found.items() if v}}


def _file_entries(bundle: Path) -> dict:
    files = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(bundle).as_posix()
        files[rel] = {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def build_bundle(
    model_path: str | Path,
    out: str | Path,
    config: DeployConfig | None = None,
    options: BuildOptions | None = None,
) -> dict:
    """Build a bundle directory for one backend and precision; returns its manifest.

    Raises:
        BackendUnavailable: the backend cannot run here (the message says how to get it).
        ConfigError: bad options, an existing bundle without force, an unsupported precision.
    """
    config = config or DeployConfig()
    options = options or BuildOptions()
    model_path, out = Path(model_path), Path(out)
    if config.precision == "auto":
        return _build_auto(model_path, out, config, options)
    backend = BACKENDS.get(config.backend)()
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend {config.backend!r} is unavailable: {reason}")
    if config.precision not in backend.precisions:
        why = backend.precision_notes.get(config.precision)
        raise ConfigError(
            f"backend {config.backend!r} supports precisions {backend.precisions}, not "
            f"{config.precision!r}" + (f": {why}" if why else "")
        )
    check_output(out, model_path, config.force)
    if not model_path.is_file():
        raise ConfigError(f"ONNX model {model_path} does not exist")
    previous_cache = out / "timing.cache"
    if options.timing_cache is None and previous_cache.is_file():
        # --force over a bundle: its tactic timings make the rebuild faster
        options = dataclasses.replace(options, timing_cache=str(previous_cache))
    try:
        source = onnx.load(str(model_path))
        onnx.checker.check_model(source)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise KompaktError(
            f"{model_path} is not a valid ONNX model ({first}); export it with kompakt export"
        ) from None
    if not source.graph.input or not source.graph.output:
        raise KompaktError(f"{model_path} has no graph inputs or outputs; nothing to deploy")
    meta = _metadata(source)
    inputs = _tensor_entries(source.graph.input)
    outputs = _tensor_entries(source.graph.output)
    dataset = config.calib_data or meta.get("dataset", {}).get("name")
    root = config.data_root or meta.get("dataset", {}).get("root")
    data = _splits(dataset, root, inputs[0]["shape"], meta)
    if config.precision == "int8" and data is None:
        raise ConfigError(
            "INT8 needs calibration data: pass --calib-data DATASET (the model's metadata names "
            "none)"
        )

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    # the owner's pid in the name: the next deploy removes it once that process is gone
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        shutil.copyfile(model_path, tmp / "model.onnx")
        with temp_files_in(tmp / ".work"):  # the quantizer's scratch files die with the build
            manifest = _build_into(
                tmp, backend, config, options, data, source, meta, inputs, outputs
            )
        manifest["build_seconds"] = round(time.perf_counter() - start, 2)
        manifest["files"] = _file_entries(tmp)
        manifest["bundle"] = config.identity(out)
        if config.sign_key:
            manifest["signature"] = sign_manifest(manifest, config.sign_key)
        validate_manifest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build_into(tmp, backend, config, options, data, source, meta, inputs, outputs) -> dict:
    ort = require("onnxruntime", "cpu", "the reference run of kompakt deploy")

    precision = config.precision
    graph = tmp / "model.onnx"
    quantization = None
    graph_precision = precision
    if precision == "int8":
        graph = tmp / "model.int8.onnx"
        calib = data["train"][: config.calib_samples]
        result = quantize_int8(
            tmp / "model.onnx",
            graph,
            calib,
            config.calib_method,
            scheme=_int8_scheme(config, backend),
            float_bias=backend.capabilities.int8_float_bias,
        )
        quantization = _quantization_record(result, backend)
    elif precision == "fp16" and backend.capabilities.fp16_graph:
        graph = tmp / "model.fp16.onnx"
        onnx.save(convert_to_fp16(source), graph)
    else:
        graph_precision = "fp32"  # fp16 on other backends: the backend stores half weights

    batch_axis = inputs[0]["shape"][0] if inputs[0]["shape"] else 1
    fixed = isinstance(batch_axis, int) and batch_axis > 0
    max_batch = engine_max_batch(backend, options, batch_axis)
    chunk = batch_axis if fixed else min(64, max_batch or 64)
    last: dict = {}

    def build_and_measure(graph_path: Path) -> tuple[dict, dict | None, dict]:
        artefact = backend.build(graph_path, tmp, precision, options)
        provisional = _manifest(
            config,
            options,
            artefact,
            meta,
            inputs,
            outputs,
            quantization,
            graph_precision,
            max_batch,
        )
        (tmp / MANIFEST).write_text(json.dumps(provisional))
        runner = _runner(tmp, provisional, artefact, options.threads)
        reference_session = ort.InferenceSession(
            str(tmp / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        if data is not None:
            x = data["val"][: config.eval_samples]
        else:
            shape = [d if isinstance(d, int) and d > 0 else 2 for d in inputs[0]["shape"]]
            x = np.random.default_rng(0).standard_normal([8, *shape[1:]]).astype(np.float32)
        reference = measure.run_batches(
            lambda b: reference_session.run(None, {inputs[0]["name"]: b})[0], x, chunk, fixed
        )
        got = measure.run_batches(runner.run, x, chunk, fixed)
        runner.close()
        last.update(x=x, reference=reference, got=got)
        parity = {"vs_source_onnx": measure.parity(reference, got)}
        accuracy = None
        if data is not None:
            labels = data["val_labels"][: len(x)]
            base = measure.accuracy(reference, labels, data["task"])
            mine = measure.accuracy(got, labels, data["task"])
            accuracy = {"split": "val", "samples": len(x), "fp32_source": base, "bundle": mine}
            if "top1" in base:
                accuracy["drop_points"] = round(100 * (base["top1"] - mine["top1"]), 3)
        return artefact, accuracy, parity

    artefact, accuracy, parity = build_and_measure(graph)
    if precision == "int8" and config.max_accuracy_drop is not None and accuracy:
        candidates = quantizable_nodes(tmp / "model.onnx")
        excluded: list[str] = []
        # Keep the first and last weight layers in float first (usually the most sensitive),
        # then work inwards from both ends until the drop is within the limit.
        order = [n for pair in zip(candidates, reversed(candidates), strict=True) for n in pair]
        order = list(dict.fromkeys(order))
        while accuracy.get("drop_points", 0) > config.max_accuracy_drop and order:
            excluded.append(order.pop(0))
            result = quantize_int8(
                tmp / "model.onnx",
                graph,
                data["train"][: config.calib_samples],
                config.calib_method,
                excluded,
                scheme=_int8_scheme(config, backend),
                float_bias=backend.capabilities.int8_float_bias,
            )
            quantization = _quantization_record(result, backend)
            artefact, accuracy, parity = build_and_measure(graph)
        quantization["accuracy_guard"] = {
            "max_drop_points": config.max_accuracy_drop,
            "met": accuracy.get("drop_points", 0) <= config.max_accuracy_drop,
            "excluded_nodes": excluded,
        }
        if not quantization["accuracy_guard"]["met"]:
            raise KompaktError(
                f"INT8 drops {accuracy['drop_points']:.2f} points even with every weight layer "
                f"kept in float; the limit is {config.max_accuracy_drop}: deploy fp32 instead"
            )

    warnings_, speed = [], None
    if precision != "fp32" and backend.capabilities.device == "cpu":
        speed = _speed_vs_fp32(tmp, backend, artefact, options, last["x"], chunk)
        if quantization is not None:
            quantization["speed_vs_fp32"] = speed
        slower = {b: r for b, r in speed.items() if r < 1.0}
        if slower:
            warnings_.append(
                f"{precision} is slower than fp32 here at batch(es) "
                + ", ".join(f"{b} ({r:.2f}x)" for b, r in slower.items())
                + "; consider --precision fp32 or auto"
            )
        _drop_intermediate_graphs(tmp, artefact)
        if quantization is not None and not (tmp / quantization["graph"]).exists():
            quantization["graph"] = None  # turned into the backend's own artefact, not shipped
    if config.ckpt:
        parity["vs_pytorch"] = _pytorch_parity(
            config.ckpt, tmp, artefact, data, inputs, options, config
        )
    manifest = _manifest(
        config, options, artefact, meta, inputs, outputs, quantization, graph_precision, max_batch
    )
    manifest.update(accuracy=accuracy, parity=parity, golden=_golden(tmp, config, last))
    if speed is not None:
        manifest["speed_vs_fp32"] = speed
    manifest["warnings"] = warnings_
    for message in warnings_:
        warnings.warn(message, stacklevel=3)
    return manifest


def _speed_vs_fp32(tmp, backend, artefact, options, x, chunk) -> dict[str, float]:
    """This backend's FP32 time / the bundle's time per batch (> 1: the bundle is faster),
    interleaved, about half a second per batch: enough to tell a win from a loss."""
    from kompakt.timing import interleaved_medians

    manifest = json.loads((tmp / MANIFEST).read_text())
    reference_dir = tmp / ".fp32"
    reference_dir.mkdir()
    try:
        shutil.copyfile(tmp / "model.onnx", reference_dir / "model.onnx")
        fp32 = backend.build(reference_dir / "model.onnx", reference_dir, "fp32", options)
        fp32_manifest = {**manifest, "precision": "fp32", "quantization": None}
        runners = {
            "fp32": _runner(reference_dir, fp32_manifest, fp32, options.threads),
            "bundle": _runner(tmp, manifest, artefact, options.threads),
        }
        ratios = {}
        for batch in sorted({1, chunk}):
            sample = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
            start = time.perf_counter()
            runners["bundle"].run(sample)
            once = max(time.perf_counter() - start, 1e-5)
            runs = int(min(200, max(5, 0.25 / once)))
            medians = interleaved_medians(
                {k: (lambda r=r, s=sample: r.run(s)) for k, r in runners.items()}, runs, warmup=3
            )
            ratios[str(batch)] = round(medians["fp32"] / medians["bundle"], 3)
        for runner in runners.values():
            runner.close()
    finally:
        shutil.rmtree(reference_dir, ignore_errors=True)
    return ratios


def _drop_intermediate_graphs(tmp: Path, artefact) -> None:
    """One graph per role: the source (model.onnx) and what the engine loads. An intermediate
    INT8 / FP16 graph the CPU backend turned into its own artefact is not shipped."""
    keep = {"model.onnx", artefact.path, *artefact.extra}
    for path in tmp.glob("model.*.onnx"):
        if path.name not in keep:
            path.unlink()


AUTO_MAX_DROP = 1.0  # points of top-1 accuracy INT8 may cost under --precision auto by default


def _build_auto(model_path: Path, out: Path, config: DeployConfig, options: BuildOptions) -> dict:
    """--precision auto: build INT8 (it measures itself against this backend's FP32 at the
    bundle's batch sizes, and its validation accuracy); keep it only if it is faster at every
    measured batch and within the accuracy limit, else build FP32. The manifest says why."""
    backend = BACKENDS.get(config.backend)()
    check_output(out, model_path, config.force)
    named = config.identity(out)  # the trial is built elsewhere: name it after out
    config = dataclasses.replace(config, bundle_name=named["name"], bundle_version=named["version"])
    limit = config.max_accuracy_drop if config.max_accuracy_drop is not None else AUTO_MAX_DROP
    considered: dict[str, dict] = {}
    chosen = None
    if "int8" in backend.precisions:
        trial = out.with_name(f".{out.name}.auto-int8")
        try:
            manifest = build_bundle(
                model_path,
                trial,
                dataclasses.replace(config, precision="int8", max_accuracy_drop=limit, force=True),
                options,
            )
            speed = manifest.get("speed_vs_fp32") or {}
            drop = (manifest.get("accuracy") or {}).get("drop_points")
            faster = bool(speed) and all(r >= 1.0 for r in speed.values())
            considered["int8"] = {"speed_vs_fp32": speed, "drop_points": drop, "kept": faster}
            if faster:
                chosen = manifest
                _replace_dir(trial, out)
        except KompaktError as error:  # no calibration data, or the accuracy limit not met
            considered["int8"] = {"kept": False, "reason": str(error)}
        finally:
            shutil.rmtree(trial, ignore_errors=True)
    if chosen is None:
        chosen = build_bundle(
            model_path, out, dataclasses.replace(config, precision="fp32", force=True), options
        )
    chosen["precision_auto"] = {
        "chosen": chosen["precision"],
        "rule": f"the fastest at every measured batch within {limit} points of FP32 accuracy",
        "considered": considered,
    }
    chosen.pop("signature", None)
    if config.sign_key:  # the record above changed the manifest: sign what is shipped
        chosen["signature"] = sign_manifest(chosen, config.sign_key)
    _rewrite_manifest(out, chosen)
    return chosen


def is_bundle(path: Path) -> bool:
    """A directory whose kompakt.json parses and has our format (safe to replace)."""
    manifest = path / MANIFEST
    if not path.is_dir() or path.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "files" in data


def check_output(out: Path, source: Path, force: bool) -> None:
    """Refuse an output path that replacing would destroy something that is not a bundle."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ConfigError(f"{out} exists; pass --force to replace the bundle")
    resolved = out.resolve()
    if resolved in (Path.cwd().resolve(), Path(resolved.anchor)) or resolved in (
        Path.cwd().resolve().parents
    ):
        raise ConfigError(f"refusing to replace {out}: it is the working directory or above it")
    if resolved in source.resolve().parents:
        raise ConfigError(f"refusing to replace {out}: it contains the source model {source}")
    if not is_bundle(out):
        kind = "a file" if out.is_file() else "a directory that is not a kompakt bundle"
        raise ConfigError(
            f"refusing to replace {out}: it is {kind} (--force only replaces bundles); choose "
            "another -o"
        )


def _clean_stale(out: Path, older_than_s: float = 3600.0) -> None:
    """Finish or undo an interrupted replacement, and remove build directories left by killed
    deploys: those whose owner process is gone (the pid in the name; a concurrent deploy's are
    left alone), and unnamed ones older than an hour."""
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists() and is_bundle(old):
        old.rename(out)  # the crash came between the two renames: put the old bundle back
    now = time.time()
    for stale in out.parent.glob(f".{out.name}.build-*"):
        owner = stale.name[len(f".{out.name}.build-") :].split("-", 1)[0]
        gone = not _alive(int(owner)) if owner.isdigit() else None
        if stale.is_dir() and (
            gone or (gone is None and now - stale.stat().st_mtime > older_than_s)
        ):
            shutil.rmtree(stale, ignore_errors=True)
    for retired in out.parent.glob(f".{out.name}.retired-*"):
        stamp = retired.name.rsplit("-", 1)[-1]
        if stamp.isdigit() and now - int(stamp) / 1e9 > RETIRED_KEEP_S:
            shutil.rmtree(retired, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def temp_files_in(folder: Path):
    """Temporary files (ONNX Runtime's quantizer writes augmented models through `tempfile`) go
    to `folder` while this runs, so a killed build leaves them inside its own build directory,
    which the next deploy removes, not in the system temp directory."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


RETIRED_KEEP_S = 600.0  # a replaced bundle stays readable this long for engines loading it


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where the OS
    or the filesystem cannot."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _replace_dir(src: Path, dst: Path) -> None:
    """Put a finished bundle directory in place of dst.

    Where the OS can, the two directories are swapped in one atomic step, so a reader always
    finds a complete bundle at dst; the replaced one is kept (retired) for RETIRED_KEEP_S so an
    engine that pinned it mid-load can finish (see PinnedDirectory). Elsewhere two renames are
    used, and a crash between them leaves the old bundle in .NAME.old, which the next deploy
    puts back (`_clean_stale`) and `load` points to.
    """
    if not dst.exists():
        src.rename(dst)
        return
    if _exchange(src, dst):
        src.rename(dst.with_name(f".{dst.name}.retired-{time.time_ns()}"))
        return
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def _rewrite_manifest(bundle: Path, manifest: dict) -> None:
    validate_manifest(manifest)
    atomic_write_text(bundle / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _golden(tmp: Path, config: DeployConfig, last: dict) -> dict:
    """Store the first validation inputs with the source graph's FP32 outputs, and the tolerance
    this build measured, so `kompakt verify` can re-check the numbers anywhere."""
    count = min(config.golden_samples, len(last["x"]))
    measured = measure.parity(last["reference"][:count], last["got"][:count])
    return {
        "file": golden.save_golden(tmp, last["x"][:count], last["reference"][:count]),
        "samples": count,
        "reference": "the source ONNX graph in FP32 on ONNX Runtime CPU, at build time",
        "built": {k: measured[k] for k in ("max_abs", "max_rel", "top1_agreement")},
        "tolerance": golden.tolerance(config.precision, measured, count),
    }


def _int8_scheme(config: DeployConfig, backend) -> str:
    """The portable scheme (7-bit weights) fixes the saturating int16 pair sums of x86 CPUs
    without VNNI; GPU kernels accumulate in int32, so their graphs keep full 8-bit weights."""
    return config.int8_scheme if backend.capabilities.device == "cpu" else "full-range"


def _quantization_record(result, backend) -> dict:
    record = asdict(result)
    # CPU int8 kernels saturate without VNNI; GPU backends accumulate in int32 on any device
    record["cpu_kernels"] = backend.capabilities.device == "cpu"
    return record


def _runner(bundle: Path, manifest: dict, artefact, threads: int | None):
    """The backend's runner on a bundle still being built (no hashes to check yet)."""
    names = {"artifact": artefact.path, "artifact_files": [artefact.path, *artefact.extra]}
    files = EngineFiles.read(bundle, names)
    return RUNNERS.get(manifest["backend"])(files, manifest, threads)


def _pytorch_parity(ckpt_path, tmp, artefact, data, inputs, options, config) -> dict:
    if data is not None:
        x = data["val"][: min(config.eval_samples, 256)]
    else:
        shape = [d if isinstance(d, int) and d > 0 else 8 for d in inputs[0]["shape"]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    manifest = json.loads((tmp / MANIFEST).read_text())
    runner = _runner(tmp, manifest, artefact, options.threads)
    try:
        return measure.pytorch_parity(
            ckpt_path, runner.run, x, min(64, manifest.get("max_batch") or 64)
        )
    finally:
        runner.close()


def engine_max_batch(backend, options: BuildOptions, batch_axis: object) -> int | None:
    """The largest batch the built engine takes, always recorded in the manifest: a static
    batch axis; a GPU backend's profile maximum (its engine refuses more); otherwise the
    user's --max-batch, or None (CPU runtimes take any batch)."""
    if isinstance(batch_axis, int) and batch_axis > 0:
        return batch_axis
    if backend.capabilities.device == "gpu":
        return profile_batches(options)[2]
    return options.max_batch


ORT_FLOOR = "1.23"  # the lowest onnxruntime pyproject.toml claims


def runtime_requirements(backend: str, artefact: str, precision: str) -> dict[str, str]:
    """The backend versions a bundle needs, from what it ships: an INT8 graph that ONNX Runtime
    saved after its own Q/DQ fusions (QLinearMatMul with per-channel zero points) runs only on
    that ONNX Runtime or newer (a 1.32 one failed on 1.30); other ONNX graphs on the floor."""
    if not backend.startswith("onnxruntime"):
        return {}
    ort = package_version("onnxruntime") or package_version("onnxruntime-gpu") or ORT_FLOOR
    saved_by_ort = artefact.startswith("model.optimized")
    if saved_by_ort and precision == "int8":
        return {"onnxruntime": ">=" + ".".join(ort.split(".")[:2])}
    return {"onnxruntime": f">={ORT_FLOOR}"}


def _manifest(
    config, options, artefact, meta, inputs, outputs, quantization, graph_precision, max_batch
):
    pre = Preprocessing.from_dict(
        meta["preprocessing"] if isinstance(meta.get("preprocessing"), dict) else None
    )
    channels_known = len(inputs[0]["shape"]) == 4
    spatial_dynamic = any(isinstance(d, str) for d in inputs[0]["shape"][2:])
    return {
        "schema_version": SCHEMA_VERSION,
        "kompakt_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": config.backend,
        "precision": config.precision,
        "graph_precision": graph_precision,
        "task": "regression" if meta.get("task") == "regression" else "classification",
        "inputs": inputs,
        "outputs": outputs,
        "max_batch": max_batch,
        "artifact": artefact.path,
        "artifact_files": [artefact.path, *artefact.extra],
        "files": {},
        "preprocessing": {
            **pre.to_dict(),
            "layout": "HWC" if channels_known else pre.layout,  # raw images apps pass
            "fully_convolutional": spatial_dynamic,
            "source": meta.get("preprocessing_source", "model metadata"),
        },
        "class_names": [str(c) for c in meta.get("class_names", [])],
        "backend_options": artefact.backend_options,
        "backend_info": artefact.info,
        "quantization": quantization,
        "accuracy": None,
        "parity": {},
        "tools": _versions(),
        "requires": runtime_requirements(config.backend, artefact.path, config.precision),
        "target": {**describe_machine(("onnxruntime",)), "int8_isa": int8_isa()},
    }
