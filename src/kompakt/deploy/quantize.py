"""INT8: static Q/DQ quantisation with ONNX Runtime's quantizer, TensorRT-compatible.

Symmetric activations and weights (zero-points 0, so TensorRT parses the Q/DQ), per-channel
weights where the runtime accepts them (per-tensor fallback otherwise, e.g. batched 3-D MatMul
weights of grouped heads), calibration on the train split of the checkpoint's dataset (never the
test split), with a progress bar.

Two weight schemes (see `kompakt.runtime.cpu` for why): "portable" keeps weights within 7 bits
(|q| <= 64), exact on every CPU; "full-range" uses all 8 bits, exact only with VNNI / AMX / ARM.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from kompakt.errors import ConfigError, KompaktError
from kompakt.progress import progress
from kompakt.runtime.cpu import INT8_SCHEMES, PORTABLE_MAX_ABS_WEIGHT, scheme_requirement

CALIB_METHODS = ("minmax", "entropy", "percentile")
# A MatMul / Gemm whose reduction (inner) dimension is below this stays in float: int8 loses
# there. Measured with ONNX Runtime 1.31 on an AMD EPYC (1 thread, 4096 x K @ K x 64):
# int8 / fp32 time 2.64 at K=4, 1.95 at 8, 1.51 at 16, 1.07 at 32, 0.71 at 64, 0.51 at 128
# (benchmarks/int8_matmul_crossover.py). TT chains are mostly such small-K MatMuls.
MIN_INT8_INNER_DIM = 64


@dataclass
class QuantizationResult:
    graph: str  # file name of the Q/DQ graph
    per_channel: bool
    calib_method: str
    calib_samples: int
    scheme: str = "portable"
    requires: dict | None = None  # what a CPU needs to run it exactly (None: any CPU)
    max_abs_weight: int = 0  # largest |q| over the int8 weights
    excluded_nodes: list[str] = field(default_factory=list)
    kept_float: dict[str, list[str]] = field(default_factory=dict)  # why -> node names
    notes: list[str] = field(default_factory=list)


class _Reader:
    """ORT CalibrationDataReader over an array, with progress (a bar, or a heartbeat off a TTY)."""

    def __init__(self, name: str, samples: np.ndarray, batch: int) -> None:
        self.name, self.samples, self.batch, self.pos = name, samples, batch, 0
        self.bar = progress(total=len(samples), desc="calibrating")

    def get_next(self) -> dict | None:
        if self.pos >= len(self.samples):
            self.bar.close()
            return None
        chunk = self.samples[self.pos : self.pos + self.batch]
        self.pos += len(chunk)
        self.bar.update(len(chunk))
        return {self.name: chunk}

    def rewind(self) -> None:
        self.pos = 0


def _runs(path: str, sample: np.ndarray, input_name: str) -> str | None:
    """None if ONNX Runtime loads and runs the model, else the first line of its error."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # the probe's expected failure is reported by us, once
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, {input_name: sample})
        return None
    except Exception as error:
        return str(error).strip().splitlines()[0]
    finally:
        ort.set_default_logger_severity(2)


def calibration_batch(samples: int, method: str) -> tuple[int, int]:
    """(reader batch, samples used). Entropy and percentile stack every batch's activations
    into one array, so all batches must be the same size: pick a divisor of the sample count,
    or drop the remainder when only tiny divisors exist."""
    if method == "minmax" or samples <= 16:
        return min(16, samples), samples
    divisor = max(b for b in range(1, 17) if samples % b == 0)
    if divisor >= 8:
        return divisor, samples
    return 16, samples - samples % 16


def constant_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of nodes whose inputs are all constants (initializers or other constant nodes):
    e.g. a TT-conv kernel rebuilt from its cores. They are weights, not activations."""
    constant = {init.name for init in model.graph.initializer} | {""}
    names = set()
    for node in model.graph.node:  # graph order is topological
        if all(name in constant for name in node.input):
            constant.update(node.output)
            names.add(node.name)
    return names


def light_matmuls(model: onnx.ModelProto, min_inner: int | None = None) -> list[str]:
    """MatMul / Gemm nodes with a constant weight whose inner dimension is below `min_inner`
    (default MIN_INT8_INNER_DIM): too small for int8 kernels to gain."""
    min_inner = MIN_INT8_INNER_DIM if min_inner is None else min_inner
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    light = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        weight = shapes.get(node.input[1])
        if weight is None or len(weight) < 2:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        inner = weight[-1] if trans_b else weight[-2]
        if inner < min_inner:
            light.append(node.name)
    return light


def max_abs_int8_weight(model: onnx.ModelProto) -> int:
    """The largest |q| over int8 initializers read by DequantizeLinear (the weights)."""
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in weights:
            continue
        init = weights[node.input[0]]
        if init.data_type == onnx.TensorProto.INT8:
            values = numpy_helper.to_array(init).astype(np.int32)
            largest = max(largest, int(np.abs(values).max(initial=0)))
    return largest


def quantize_int8(
    source: str | Path,
    target: str | Path,
    calib: np.ndarray,
    method: str = "minmax",
    exclude: list[str] | None = None,
    scheme: str = "portable",
    float_bias: bool = False,
) -> QuantizationResult:
    """Write a symmetric INT8 Q/DQ model of `source` to `target`.

    Args:
        calib: calibration inputs (N, C, H, W) float32, from the train split.
        method: "minmax", "entropy" or "percentile".
        exclude: node names to keep in float (the accuracy guard adds the sensitive ones).
        scheme: "portable" (7-bit weights, exact on every CPU) or "full-range" (8-bit weights,
            needs VNNI / AMX on x86).
        float_bias: keep biases float instead of INT32 DequantizeLinear inputs (TensorRT's
            DequantizeLinear takes INT8 / FP8 / INT4 only, so its parser rejects INT32 biases).

    Raises:
        ConfigError: unknown method or scheme, no calibration samples.
        KompaktError: ONNX Runtime cannot run the quantised graph in any form.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise ConfigError(f"calib_method must be one of {CALIB_METHODS}, got {method!r}")
    if len(calib) == 0:
        raise ConfigError("INT8 calibration needs at least one sample (--calib-samples)")
    if scheme not in INT8_SCHEMES:
        raise ConfigError(f"int8_scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    batch, used = calibration_batch(len(calib), method)
    calib = calib[:used]
    graph = onnx.load(str(source), load_external_data=False)  # read once: names and structure
    result = QuantizationResult(
        Path(target).name, True, method, len(calib), scheme, scheme_requirement(scheme)
    )
    result.excluded_nodes = list(exclude or [])
    keep_float, rebuilt = _float_nodes(graph, result)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # skip_symbolic_shape: ORT's symbolic shape pass raises on Constant nodes that use
        # value_ints (the dynamo exporter emits them); plain shape inference is enough here.
        # skip_optimization when weights are rebuilt in-graph (TT convs): the optimizer would
        # fold them into dense kernels and the INT8 file would outgrow the FP32 one.
        quant_pre_process(
            str(source), prepared, skip_optimization=rebuilt, skip_symbolic_shape=True
        )
        readers = lambda: _Reader(graph.graph.input[0].name, calib, batch)  # noqa: E731
        return _first_runnable(prepared, target, readers, calib, keep_float, float_bias, result)


def _float_nodes(graph: onnx.ModelProto, result: QuantizationResult) -> tuple[list[str], bool]:
    """The nodes INT8 leaves in float (excluded, rebuilt constant weights, light MatMuls),
    recorded with the reason in `result.kept_float`; and whether weights are rebuilt in-graph."""
    constant = sorted(n for n in constant_nodes(graph) if n)
    weighty = {n.name for n in graph.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    result.kept_float = {
        "constant weight rebuild (stays factored in the file)": [
            n for n in constant if n in weighty
        ],
        f"inner dimension < {MIN_INT8_INNER_DIM} (int8 is slower there)": light_matmuls(graph),
    }
    keep = sorted({*result.excluded_nodes, *constant, *light_matmuls(graph)})
    return keep, bool(constant)


def _first_runnable(prepared, target, readers, calib, keep_float, float_bias, result):
    """Quantise per channel, else per tensor: the first form ONNX Runtime runs is kept (each
    attempt calibrates with a fresh reader from `readers()`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[result.calib_method]
    for per_channel in (True, False):
        reader = readers()
        quantize_static(
            prepared,
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=result.scheme == "portable",  # 7-bit weights; activations keep 8 bits
            calibrate_method=calibration,
            nodes_to_exclude=keep_float,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": not float_bias,
            },
        )
        failure = _runs(str(target), calib[:1], reader.name)
        if failure is None:
            result.per_channel = per_channel
            result.max_abs_weight = max_abs_int8_weight(onnx.load(str(target)))
            if result.scheme == "portable" and result.max_abs_weight > PORTABLE_MAX_ABS_WEIGHT:
                raise KompaktError(
                    f"portable INT8 weights reach |q| = {result.max_abs_weight} > "
                    f"{PORTABLE_MAX_ABS_WEIGHT}: this onnxruntime's quantizer ignored "
                    "reduce_range; report it and use --int8-scheme full-range on VNNI CPUs"
                )
            return result
        result.notes.append(f"per_channel={per_channel} rejected by ONNX Runtime: {failure}")
    raise KompaktError(
        f"INT8 quantisation produced a model ONNX Runtime cannot run: {result.notes[-1]}"
    )


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the weight-bearing nodes (Conv, MatMul, Gemm) in graph order."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
