"""What an op costs in ONNX Runtime CPU on *this* machine: a small linear model per op kind,
fitted to timings of single-op graphs, so the export planner can price dozens of lowerings of
a compressed layer without timing each one.

Why not multiply-adds alone: small GEMMs (inner dimensions <= 32, as in a TT chain) run far
below the machine's peak, and every op and every batched-GEMM call has a fixed overhead; a
form with 2x fewer multiply-adds can be 5x slower (benchmarks/export_tt.py). The features
below carry those effects: seconds = w . features, with w >= 0 fitted for the smallest
*relative* error.

- gemm (count, m, k, n): [1, count, macs, input elements, output elements]
- conv (n, c, h, w, s, groups, kh, kw, ho, wo): [1, macs, macs if grouped, input elements,
  output elements, output elements if grouped]
- copy (elements): [1, elements] (a Transpose)

Calibration takes a few seconds and is cached per CPU, core count, ONNX Runtime version and
thread count under $KOMPAKT_CACHE_DIR (default ~/.cache/kompakt).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = 3  # bump when features or shapes change: old caches are then ignored
KINDS = ("gemm", "conv", "copy")


def features(op: tuple) -> tuple[str, list[float]]:
    kind = op[0]
    if kind == "gemm":
        count, m, k, n = op[1:]
        return kind, [1.0, count, count * m * k * n, count * k * n + m * k, count * m * n]
    if kind == "conv":
        n, c, h, w, s, groups, kh, kw, ho, wo = op[1:]
        macs = n * s * ho * wo * (c // groups) * kh * kw
        out = n * s * ho * wo
        grouped = groups > 1  # grouped / depthwise convs run far below the dense conv's rate
        return kind, [1.0, macs, macs * grouped, n * c * h * w, out, out * grouped]
    if kind == "copy":
        return kind, [1.0, op[1]]
    raise ValueError(f"unknown op kind {kind!r}")


@dataclass
class CostModel:
    """Seconds per op kind = weights . features(op); `key` says where it was calibrated."""

    weights: dict[str, list[float]]
    key: dict

    def predict(self, ops: list[tuple]) -> float:
        total = 0.0
        for op in ops:
            kind, f = features(op)
            total += float(np.dot(self.weights[kind], f))
        return total

    def to_dict(self) -> dict:
        return {"version": VERSION, "weights": self.weights, "key": self.key}


# -- calibration ------------------------------------------------------------------------------


def _gemm_shapes(rng: np.random.Generator) -> list[tuple]:
    """A spread of the GEMMs TT chains and dense layers run (log-uniform, bounded work)."""
    shapes = []
    while len(shapes) < 48:
        count = int(2 ** rng.integers(0, 13)) if rng.random() < 0.7 else 1
        m, k, n = (int(2 ** rng.uniform(1, 11)) for _ in range(3))
        if count * m * k * n > 3e7 or count * (k * n + m * n) > 4e6:
            continue
        shapes.append(("gemm", count, m, k, n))
    while len(shapes) < 64:  # the per-pixel chains of TT-convs: very many tiny products
        count = int(2 ** rng.integers(12, 18))
        m, k, n = (int(2 ** rng.uniform(1, 5)) for _ in range(3))
        if count * (k * n + m * n) <= 8e6:
            shapes.append(("gemm", count, m, k, n))
    return shapes


def _conv_shapes(rng: np.random.Generator) -> list[tuple]:
    shapes = []
    while len(shapes) < 24:
        n = int(2 ** rng.integers(0, 4))
        c = int(2 ** rng.integers(0, 8))
        hw = int(rng.choice([7, 14, 16, 28, 32]))
        s = int(2 ** rng.integers(2, 9))
        kernel = int(rng.choice([1, 3]))
        groups = c if rng.random() < 0.4 else 1
        if groups > 1:
            s = groups * int(2 ** rng.integers(0, 4))
        pad = kernel // 2
        macs = n * s * hw * hw * (c // groups) * kernel * kernel
        if macs > 4e7:
            continue
        shapes.append(("conv", n, c, hw, hw, s, groups, kernel, kernel, hw, hw, pad))
    return shapes


def _graph(op: tuple, path: Path) -> tuple[str, tuple[int, ...]]:
    """A one-op ONNX graph for `op`, as the exporter emits it (weights are initializers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    kind = op[0]
    inits = []
    if kind == "gemm":
        count, m, k, n = op[1:]
        if count == 1:  # (m, k) activations @ (k, n) weight
            shape = (m, k)
            inits.append(numpy_helper.from_array(rng.standard_normal((k, n), np.float32), "w"))
            node = helper.make_node("MatMul", ["x", "w"], ["y"])
        else:  # (m, k) weight @ (count, k, n) activations: the transpose-free chain step
            shape = (count, k, n)
            inits.append(numpy_helper.from_array(rng.standard_normal((m, k), np.float32), "w"))
            node = helper.make_node("MatMul", ["w", "x"], ["y"])
    elif kind == "conv":
        n, c, h, w, s, groups, kh, kw, _, _, pad = op[1:]
        shape = (n, c, h, w)
        weight = rng.standard_normal((s, c // groups, kh, kw), np.float32)
        inits.append(numpy_helper.from_array(weight, "w"))
        node = helper.make_node(
            "Conv", ["x", "w"], ["y"], group=groups, pads=[pad] * 4, kernel_shape=[kh, kw]
        )
    else:  # the 5-D permutes of a TT-conv chain (pixels to rows and back)
        shape = (op[1] // 512, 8, 8, 2, 4)
        node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 4, 2, 1])
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path), shape


def _fit(rows: list[list[float]], seconds: list[float]) -> list[float]:
    """Non-negative least squares on relative error (drop negative weights, refit)."""
    a = np.asarray(rows, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    a_rel = a / t[:, None]
    active = list(range(a.shape[1]))
    weights = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a_rel[:, active], np.ones(len(t)), rcond=None)
        if (sol >= 0).all():
            weights[:] = 0
            weights[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return [float(w) for w in weights]


def calibrate(threads: int | None = None, seed: int = 0) -> CostModel:
    """Time single-op graphs in ONNX Runtime CPU here and fit the model (a few seconds)."""
    from kompakt.progress import progress
    from kompakt.runtime.backends.base import require
    from kompakt.timing import interleaved_medians

    ort = require("onnxruntime", "cpu", "the export cost model")
    rng = np.random.default_rng(seed)
    ops = _gemm_shapes(rng) + _conv_shapes(rng)
    ops += [("copy", 512 * 4**e) for e in range(0, 8)]
    samples: dict[str, tuple[list, list]] = {kind: ([], []) for kind in KINDS}
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        for i, op in enumerate(progress(ops, desc="calibrating the export cost model")):
            path, shape = _graph(op, Path(tmp) / f"{i}.onnx")
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
            call = {"op": lambda s=session, x=x: s.run(None, {"x": x})}
            seconds = interleaved_medians(call, 7, 2)
            kind, f = features(op[:-1] if op[0] == "conv" else op)
            samples[kind][0].append(f)
            samples[kind][1].append(seconds["op"])
    weights = {kind: _fit(*samples[kind]) for kind in KINDS}
    return CostModel(weights, _key(ort, threads))


def _key(ort, threads: int | None) -> dict:
    from kompakt.machine import describe_machine

    machine = describe_machine(())
    return {
        "cpu": machine.get("cpu"),
        "cores": machine.get("cores"),
        "onnxruntime": ort.__version__,
        "threads": threads or 0,
        "version": VERSION,
    }


def cache_dir() -> Path:
    return Path(os.environ.get("KOMPAKT_CACHE_DIR") or Path.home() / ".cache" / "kompakt")


def load_or_calibrate(threads: int | None = None) -> CostModel:
    """The cached model of this machine, calibrating (and caching) it the first time."""
    from kompakt._io import atomic_write_text
    from kompakt.runtime.backends.base import require

    ort = require("onnxruntime", "cpu", "the export cost model")
    key = _key(ort, threads)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"cost-model-{digest}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key and set(saved.get("weights", {})) == set(KINDS):
            return CostModel(saved["weights"], key)
    except (OSError, ValueError):
        pass  # absent or unreadable: calibrate again
    model = calibrate(threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(model.to_dict(), indent=2))
    except OSError:
        pass  # a read-only home: the model still serves this export
    return model
