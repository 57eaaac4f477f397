"""`export_onnx`: any nn.Module -> verified ONNX made of standard ops only; `export_checkpoint`
turns a kompakt checkpoint into the module and its metadata first.

Steps: choose each factored layer's form (`tt_mode`) -> torch.export with a symbolic batch ->
ONNX (opset 20 by default) -> constant folding that never inflates TT cores -> optional
simplifier -> checker + shape inference -> parity against PyTorch in ONNX Runtime (and the ONNX
reference evaluator for small graphs) -> op census -> TensorRT lint -> atomic write.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import nn

from kompakt import __version__
from kompakt._io import atomic_write, atomic_write_text, sha256_file
from kompakt.errors import ConfigError, KompaktError
from kompakt.export.fc_to_conv import fc_to_conv
from kompakt.export.trt_lint import lint_trt
from kompakt.layers import CompressedLayer
from kompakt.measure import parity
from kompakt.models.common import set_submodule
from kompakt.options import opt
from kompakt.runtime.preprocessing import Preprocessing

TT_MODES = ("auto", "autotune", "factored", "dense")
TT_PLANS = ("model", "autotune", "macs")
SIMPLIFIERS = ("onnxslim", "onnxsim", "none")
LAYER_KEYS = ("name", "form", "in_modes", "out_modes", "ranks", "plan")  # per layer in the metadata
REFERENCE_EVALUATOR_MAX_PARAMS = 2_000_000  # the pure-Python evaluator is slow beyond this


class ExportError(KompaktError):
    """The exported graph failed a check (parity, symbolic batch, checker)."""


def parse_batch(text: str) -> str | int:
    """'dynamic' or a whole number (the --batch option)."""
    if text == "dynamic":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"batch must be 'dynamic' or an integer, got {text!r}") from None


@dataclass(frozen=True)
class ExportConfig:
    """The options of `kompakt export`; field names are the CLI option and TOML key names."""

    opset: int = opt(20, "ONNX opset (17..23; torch's exporter targets 18+).")
    batch: str | int = opt(
        "dynamic", "'dynamic' (symbolic batch axis) or a fixed N.", parse=parse_batch
    )
    max_batch: int = opt(256, "Largest batch of the dynamic axis (and the batch auto plans for).")
    tt_mode: Literal["auto", "autotune", "factored", "dense"] = opt(
        "auto",
        "Compressed layers: cores in the graph (factored), dense weights, or per layer the "
        "form and contraction plan that --tt-plan prices fastest (auto; autotune = "
        "--tt-plan autotune).",
    )
    tt_plan: Literal["model", "autotune", "macs"] = opt(
        "model",
        "How auto prices forms and plans: a cost model calibrated on this machine (cached), "
        "timing the best candidates in ONNX Runtime here (autotune), or counted multiply-adds.",
    )
    plan_threads: int | None = opt(
        None, "Threads the planned-for runtime uses (default: ONNX Runtime's default)."
    )
    simplify: Literal["onnxslim", "onnxsim", "none"] = opt("onnxslim", "Graph simplifier.")
    fc_to_conv: bool = opt(False, "Head as convolutions (any image size).")
    check: bool = opt(True, "Run the checks (parity, reference evaluator, TensorRT lint).")
    rtol: float = opt(1e-4, "Parity tolerance, relative to the largest reference output.")

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or not 17 <= self.opset <= 23:
            raise ConfigError(f"opset must be in 17..23, got {self.opset}")
        if self.tt_mode not in TT_MODES:
            raise ConfigError(f"tt_mode must be one of {TT_MODES}, got {self.tt_mode!r}")
        if self.tt_plan not in TT_PLANS:
            raise ConfigError(f"tt_plan must be one of {TT_PLANS}, got {self.tt_plan!r}")
        if self.plan_threads is not None and (
            not isinstance(self.plan_threads, int) or self.plan_threads < 1
        ):
            raise ConfigError(f"plan_threads must be an integer >= 1, got {self.plan_threads!r}")
        if self.simplify not in SIMPLIFIERS:
            raise ConfigError(f"simplify must be one of {SIMPLIFIERS}, got {self.simplify!r}")
        batch_ok = isinstance(self.batch, int) and not isinstance(self.batch, bool)
        if self.batch != "dynamic" and not (batch_ok and self.batch >= 1):
            raise ConfigError(f"batch must be 'dynamic' or an integer >= 1, got {self.batch!r}")
        if not isinstance(self.max_batch, int) or self.max_batch < 2:
            raise ConfigError(f"max_batch must be an integer >= 2, got {self.max_batch!r}")
        if not self.rtol > 0:
            raise ConfigError(f"rtol must be > 0, got {self.rtol}")

    @property
    def target_batch(self) -> int:
        return self.batch if isinstance(self.batch, int) else self.max_batch


@dataclass(frozen=True)
class ExportMetadata:
    """What travels with the graph (ONNX metadata_props) to the bundle and the app.

    Args:
        preprocessing: raw pixels -> model input; None records none (deploy then uses its
            calibration dataset's and says so in the manifest).
        class_names: label per output index.
        task: "classification" or "regression".
        dataset: {"name", "root"} of the training data (the default calibration set).
        source_sha256: hash of the checkpoint the module came from.
    """

    preprocessing: Preprocessing | None = None
    class_names: tuple[str, ...] = ()
    task: str = "classification"
    dataset: dict | None = None
    source_sha256: str = ""

    def props(self, layers: list[dict]) -> dict[str, str]:
        props = {
            "kompakt_version": __version__,
            "checkpoint_sha256": self.source_sha256,
            "class_names": json.dumps([str(c) for c in self.class_names]),
            "dataset": json.dumps(self.dataset or {"name": None, "root": None}),
            "task": self.task,
            "tt_layers": json.dumps([{k: r.get(k) for k in LAYER_KEYS} for r in layers]),
        }
        if self.preprocessing is not None:  # absent = unknown: deploy takes the dataset's
            props["preprocessing"] = json.dumps(self.preprocessing.to_dict())
        return props


@dataclass
class ExportReport:
    path: str
    opset: int
    ok: bool = True
    input_shape: list = field(default_factory=list)
    output_shape: list = field(default_factory=list)
    file_bytes: int = 0
    param_bytes: int = 0
    op_counts: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    parity: list = field(default_factory=list)
    reference_evaluator: dict | None = None
    trt_lint: dict | None = None
    export_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        ops = ", ".join(f"{k}x{v}" for k, v in sorted(self.op_counts.items()))
        lines = [
            f"{self.path}: opset {self.opset}, {self.file_bytes / 1024:.1f} KiB, "
            f"input {self.input_shape} -> output {self.output_shape}",
            f"ops: {ops}",
        ]
        for layer in self.layers:
            lines.append(
                f"  {layer['name']}: {layer['type']} as {layer['form']} "
                f"({layer['params']:,} params, {layer['compression']:.1f}x vs dense)"
            )
        for p in self.parity:
            lines.append(
                f"parity {p['runtime']} batch {p['batch']}: max abs {p['max_abs']:.3g}, "
                f"max rel {p['max_rel']:.3g}, top-1 agreement {p['top1_agreement']:.3f}"
            )
        if self.reference_evaluator:
            lines.append(f"onnx.reference: max abs {self.reference_evaluator['max_abs']:.3g}")
        if self.trt_lint:
            lint = self.trt_lint
            lines.append(f"TensorRT lint: {lint['errors']} error(s), {lint['warnings']} warning(s)")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


# -- tt_mode ----------------------------------------------------------------------------------


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Input shape of every compressed layer for the example input (for the cost model)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(module: nn.Module, args: tuple) -> None:  # None: the inputs stay as they are
            shapes.setdefault(name, tuple(args[0].shape))

        return record

    hooks = [
        m.register_forward_pre_hook(recorder(n))
        for n, m in model.named_modules()
        if isinstance(m, CompressedLayer)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return {k: tuple(int(d) for d in v) for k, v in shapes.items()}


def choose_measured(timings: dict[str, dict[int, float]], forms: tuple[str, ...]) -> str:
    """The form whose worst slowdown against the fastest form, over the timed batches, is the
    smallest (ties: the first listed, the small file): never far from the best at any batch."""
    batches = set.intersection(*(set(t) for t in timings.values()))

    def worst(form: str) -> float:
        return max(timings[form][b] / min(timings[f][b] for f in timings) for b in batches)

    return min(timings, key=lambda f: (round(worst(f), 2), forms.index(f)))


SHORTLIST = 4  # autotune times this many plans the cost model ranks best, plus the baselines
BASELINE_FORMS = ("factored", "dense", "chain")  # always priced, timed and reported


def apply_tt_mode(
    model: nn.Module,
    mode: str,
    batches: int | tuple[int, ...],
    example: torch.Tensor,
    tune: Callable[[nn.Module, tuple[int, ...], tuple[str, ...]], dict] | None = None,
    estimate: Callable[[nn.Module, tuple[int, ...], tuple[str, ...]], dict] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Fix each compressed layer's exported form; returns the model (a new root when the model
    itself is a layer made dense) and one record per layer that has a choice of forms.

    Every `CompressedLayer` lists its forms (`export_forms`: e.g. TTLinear "factored", its
    contraction plans "factored[2-2-2:rtl]" and "dense"; TTConv2d "factored" / "chain" /
    "conv" / "dense") and counts their multiply-adds (`export_costs`). "auto" prices every
    form at each of `batches` with `estimate` (the cost model calibrated on this machine,
    seconds per batch) and takes `choose_measured`'s pick, the form never far from the
    fastest at any batch; without `estimate`, the fewest multiply-adds at the largest batch.
    "autotune" times, with `tune`, the forms the estimate ranks best plus "factored" and
    "dense", and picks by the timings. Ties go to the first listed form (the small file).
    """
    batches = (batches,) if isinstance(batches, int) else tuple(batches)
    records = []
    shapes = _input_shapes(model, example)
    for name, module in list(model.named_modules()):
        if not isinstance(module, CompressedLayer) or len(module.export_forms()) < 2:
            continue
        if getattr(module, "_export_form_fixed", False):
            continue  # a candidate being timed by measure_forms
        shape = shapes.get(name)
        if shape is None:
            continue  # not reached by the example input: leave it as written
        shape = (max(batches), *shape[1:])
        choice = _choose_form(module, mode, shape, tune, estimate)
        record = _form_record(name, module, shape, choice)
        form = choice["form"]
        replacement = module.export_as(form)
        if isinstance(replacement, CompressedLayer):
            record.update(replacement.export_info())  # with the plan the form fixed
        if replacement is not module:
            if not name:
                model = replacement  # the bare layer itself
            else:
                set_submodule(model, name, replacement)
        records.append(record)
    return model, records


def _choose_form(module, mode: str, shape: tuple, tune, estimate) -> dict:
    """apply_tt_mode's choice for one layer at `shape`: {"form", "chosen_by", "costs",
    "forms", "predicted", "timings"} (see apply_tt_mode for the rules)."""
    costs = module.export_costs(shape)
    forms = module.export_forms()
    auto = mode in ("auto", "autotune")
    predicted = estimate(module, shape, forms) if estimate and auto else None
    timings, chosen_by = None, None
    if auto and predicted:
        ranked = sorted(forms, key=lambda f: max(predicted[f].values()))
        shortlist = [f for f in forms if f in ranked[:SHORTLIST] or f in BASELINE_FORMS]
        form = choose_measured(predicted, forms)
        chosen_by = "cost model calibrated on this machine (onnxruntime)"
    elif auto:
        shortlist = list(forms)
        form = min(forms, key=lambda f: (costs.get(f, math.inf), forms.index(f)))
        chosen_by = "counted multiply-adds"
    else:
        form = mode if mode in forms else forms[0]
    if mode == "autotune" and tune is not None:
        timings = tune(module, shape, tuple(shortlist))
        form = choose_measured(timings, tuple(shortlist))
        chosen_by = "measured (onnxruntime, this machine)"
    return {
        "form": form,
        "chosen_by": chosen_by,
        "costs": costs,
        "forms": forms,
        "predicted": predicted,
        "timings": timings,
    }


def _form_record(name: str, module, shape: tuple, choice: dict) -> dict:
    """The export report's record of one layer's form choice (the estimates and timings that
    decided it, trimmed to the shortlist, the baselines and the chosen form)."""
    form, costs, forms = choice["form"], choice["costs"], choice["forms"]
    predicted, timings = choice["predicted"], choice["timings"]
    record = {
        "name": name,
        "type": type(module).__name__,
        "form": form,
        "params": module.core_params(),
        "dense_params": module.dense_params(),
        "compression": module.compression_ratio(),
        "macs": costs.get(form, 0),
        "costs": {f: c for f, c in costs.items() if f in BASELINE_FORMS or f == form},
        "candidates": len(forms),
        "input_shape": list(shape[1:]),
        **module.export_info(),
    }
    if choice["chosen_by"]:
        record["chosen_by"] = choice["chosen_by"]
    if predicted:
        keep = sorted(predicted, key=lambda f: max(predicted[f].values()))[:SHORTLIST]
        keep = set(keep) | (set(forms) & set(BASELINE_FORMS)) | {form}
        record["predicted_ms"] = {
            f: {str(b): round(t * 1e3, 4) for b, t in per.items()}
            for f, per in predicted.items()
            if f in keep
        }
    if timings is not None:
        record["timings_ms"] = {
            f: {str(b): round(t * 1e3, 4) for b, t in per.items()} for f, per in timings.items()
        }
    return record


def fixed_form(layer: nn.Module, form: str) -> nn.Module:
    """A copy of `layer` as export form `form`, which `apply_tt_mode` leaves as it is (for
    timing one candidate on its own)."""
    candidate = copy.deepcopy(layer).export_as(form)
    candidate._export_form_fixed = True
    return candidate


def tune_batches(config: ExportConfig) -> tuple[int, ...]:
    """The batches a plan is chosen for: 1, 8, 64 and the export's target batch (at most)."""
    target = config.target_batch
    return tuple(sorted({b for b in (1, 8, 64) if b <= target} | {target}))


def estimate_forms(
    layer: nn.Module,
    shape: tuple[int, ...],
    forms: tuple[str, ...],
    config: ExportConfig,
    model=None,
) -> dict[str, dict[int, float]] | None:
    """Predicted seconds of each form at `tune_batches` by the cost model of this machine
    (None when the layer does not describe its ops or ONNX Runtime is not installed)."""
    from kompakt.export.cost_model import load_or_calibrate
    from kompakt.runtime.backends.base import BackendUnavailable

    if config.tt_plan == "macs":
        return None
    try:
        model = model or load_or_calibrate(config.plan_threads)
    except BackendUnavailable:
        return None
    out: dict[str, dict[int, float]] = {}
    for form in forms:
        per = {}
        for batch in tune_batches(config):
            ops = layer.export_ops((batch, *shape[1:]), form)
            if ops is None:
                return None
            per[batch] = model.predict(ops)
        out[form] = per
    return out


def measure_forms(
    layer: nn.Module, shape: tuple[int, ...], forms: tuple[str, ...], config: ExportConfig
) -> dict[str, dict[int, float]]:
    """Seconds per run of each export form of `layer` alone, exported as kompakt exports it
    and timed side by side in ONNX Runtime (CPU, spinning off) at `tune_batches`."""
    import tempfile

    import numpy as np

    from kompakt.runtime.backends.base import require
    from kompakt.timing import interleaved_medians

    ort = require("onnxruntime", "cpu", "export --tt-mode autotune")
    sessions = {}
    single = ExportConfig(opset=config.opset, check=False, simplify=config.simplify)
    with tempfile.TemporaryDirectory() as tmp:
        for i, form in enumerate(forms):
            path = Path(tmp) / f"{i}.onnx"
            export_onnx(fixed_form(layer, form), path, single, torch.randn(2, *shape[1:]))
            options = ort.SessionOptions()
            if config.plan_threads:
                options.intra_op_num_threads = config.plan_threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            sessions[form] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
    name = next(iter(sessions.values())).get_inputs()[0].name
    timings: dict[str, dict[int, float]] = {form: {} for form in forms}
    rng = np.random.default_rng(0)
    for batch in tune_batches(config):
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        calls = {f: (lambda s=s, x=x: s.run(None, {name: x})) for f, s in sessions.items()}
        for form, seconds in interleaved_medians(calls, runs=15, warmup=3).items():
            timings[form][batch] = seconds
    return timings


# -- export -----------------------------------------------------------------------------------


def _fold_limit(model: nn.Module) -> int | None:
    """Constant-folding output limit that keeps rebuilt compressed weights out of the file.

    Folding a core's reshape/transpose is free (same size); folding a kernel rebuild would store
    the dense kernel. So fold only outputs no larger than the largest core and smaller than the
    smallest weight a layer rebuilds in-graph (each layer says both: `export_constants`).
    """
    constants = [m.export_constants() for m in model.modules() if isinstance(m, CompressedLayer)]
    rebuilt = [size for _, size in constants if size is not None]
    if not rebuilt:
        return None
    return max(1024, min(max(core for core, _ in constants), min(rebuilt) - 1))


def _torch_export(model: nn.Module, example: torch.Tensor, config: ExportConfig):
    from torch.export import Dim

    dynamic: dict[int, object] = {}
    if config.batch == "dynamic":
        dynamic[0] = Dim("batch", min=1, max=config.max_batch)
    if config.fc_to_conv:
        # Dim.AUTO: pooling makes H and W obey divisibility rules torch.export infers itself
        dynamic[2] = Dim.AUTO
        dynamic[3] = Dim.AUTO
    try:
        return torch.export.export(model, (example,), dynamic_shapes=(dynamic or None,))
    except Exception as error:  # torch.export's errors are long; keep the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"torch.export could not capture the model with symbolic shapes (batch"
            f"{', height, width' if config.fc_to_conv else ''}): {first}. Use x.shape[0] or -1 "
            "in forward, never int(x.shape[0]) or .item()"
        ) from None


def _to_onnx(ep, config: ExportConfig, fold_limit: int | None) -> onnx.ModelProto:
    import onnxscript.optimizer

    # torch logs a warning per missing torchvision op on every export: not the user's concern
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            ep,
            input_names=["input"],
            output_names=["logits"],
            opset_version=config.opset,
            external_data=False,
            optimize=False,
            verbose=False,
        )
    if fold_limit is None:
        onnxscript.optimizer.optimize(program.model)
    else:
        onnxscript.optimizer.optimize(program.model, output_size_limit=fold_limit)
    return program.model_proto


def _simplify(model: onnx.ModelProto, how: str, fold_limit: int | None) -> onnx.ModelProto:
    if how == "none":
        return model
    if how == "onnxslim":
        import onnxslim

        kwargs = {"size_threshold": fold_limit * 4} if fold_limit else {}
        return onnxslim.slim(model, **kwargs)
    import onnxsim

    # onnxsim has no size limit on folding: skip it when it would rebuild TT-conv kernels
    simplified, ok = onnxsim.simplify(model, skip_constant_folding=fold_limit is not None)
    if not ok:
        raise ExportError("onnxsim could not verify its simplified graph; use --simplify onnxslim")
    return simplified


def _rename_batch_axes(model: onnx.ModelProto, config: ExportConfig) -> None:
    """Give the symbolic axes readable names (the exporter calls them s0, s77, ...)."""
    names = {0: "batch", 2: "height", 3: "width"}
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and axis in names:
                dim.dim_param = names[axis]


def _assert_symbolic_batch(model: onnx.ModelProto) -> None:
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise ExportError(
                f"{value.name}: axis 0 is fixed ({dims[0].dim_value if dims else '?'}), not "
                "symbolic; the model baked the batch in (int(x.shape[0]) or .item() in forward?)"
            )


def _shape(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _compare(reference: np.ndarray, got: np.ndarray, runtime: str, batch: int) -> dict:
    result = parity(reference, got)
    del result["samples"]
    return {"runtime": runtime, "batch": batch, **result}


def _write_onnx(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > 1_900_000_000:  # protobuf's 2 GB limit: weights go to a side file
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
        return
    atomic_write(path, lambda handle: handle.write(model.SerializeToString()))


def checkpoint_samples(ckpt: dict, count: int) -> torch.Tensor | None:
    """Up to `count` real validation inputs from the checkpoint's dataset, or None when the
    dataset is not available here (user files elsewhere: random inputs still check)."""
    data = ckpt.get("data", {})
    try:
        from kompakt.data import load_dataset

        x, _ = load_dataset(data["name"], root=data.get("root")).split("val")
    except Exception:
        return None
    if tuple(x.shape[1:]) != tuple(data.get("input_shape", ())):
        return None
    return x[:count].contiguous()


def checkpoint_metadata(ckpt: dict, source: str | Path | None = None) -> ExportMetadata:
    """The ExportMetadata a checkpoint carries from its dataset."""
    data = ckpt.get("data", {})
    pre = None
    if data.get("mean"):
        pre = Preprocessing(
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            scale=float(data.get("scale", 1.0 / 255.0)),
        )
    return ExportMetadata(
        preprocessing=pre,
        class_names=tuple(str(c) for c in data.get("class_names", [])),
        task=data.get("task", "classification"),
        dataset={"name": data.get("name"), "root": data.get("root")},
        source_sha256=sha256_file(source) if source is not None else "",
    )


def export_checkpoint(
    ckpt_path: str | Path,
    path: str | Path,
    config: ExportConfig | None = None,
    preprocessing: Preprocessing | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> ExportReport:
    """Export a kompakt checkpoint: rebuild its model, carry its dataset's preprocessing, class
    names and hash into the ONNX metadata (or the ones given), and check parity on real
    validation inputs."""
    from kompakt.models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    shape = tuple(ckpt["data"]["input_shape"])
    samples = checkpoint_samples(ckpt, 64)
    if samples is None:
        samples = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    return export_onnx(
        model,
        path,
        config,
        example_input=samples,
        metadata=checkpoint_metadata(ckpt, ckpt_path),
        preprocessing=preprocessing,
        class_names=class_names,
    )


def export_onnx(
    model: nn.Module | str | Path,
    path: str | Path,
    config: ExportConfig | None = None,
    example_input: torch.Tensor | None = None,
    *,
    preprocessing: Preprocessing | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    metadata: ExportMetadata | None = None,
) -> ExportReport:
    """Export a module to ONNX, verify it, and write `path` (+ `.report.json`).

    Args:
        model: any nn.Module (a checkpoint path is forwarded to `export_checkpoint`).
        path: the .onnx file to write.
        config: ExportConfig (defaults when None).
        example_input: (B, ...) inputs: they fix the input shape and are the parity samples
            (real data checks more than random); e.g. (B, features) for a TTLinear.
        preprocessing: how raw images become this model's inputs (recorded for bundles).
        class_names: labels of the outputs (recorded for bundles).
        metadata: everything else to record; `preprocessing` / `class_names` override it.

    Returns:
        the ExportReport (also saved as `<path>.report.json`).

    Raises:
        ExportError: a check failed; the graph is kept as `<stem>.failed.onnx` for inspection.
    """
    if isinstance(model, str | Path):
        return export_checkpoint(model, path, config)
    config = config or ExportConfig()
    path = Path(path)
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module or a checkpoint path, got {type(model)}")
    if example_input is None:
        raise ConfigError("exporting an nn.Module needs example_input (e.g. (B, C, H, W))")
    metadata = metadata or ExportMetadata()
    if preprocessing is not None or class_names is not None:
        metadata = dataclasses.replace(
            metadata,
            preprocessing=preprocessing or metadata.preprocessing,
            class_names=tuple(class_names) if class_names is not None else metadata.class_names,
        )
    _check_output_path(path)
    samples = example_input.detach().float().cpu()
    shape = tuple(samples.shape[1:])
    model = copy.deepcopy(model).float().eval()
    if config.fc_to_conv:
        model = fc_to_conv(model, shape)
    # the traced example: batch 2 for a dynamic axis (batch 1 would specialise), else the batch
    example = _batch_of(samples, 2 if config.batch == "dynamic" else config.batch)
    autotune = config.tt_mode == "autotune" or config.tt_plan == "autotune"
    model, layers = apply_tt_mode(
        model,
        "autotune" if autotune else config.tt_mode,
        tune_batches(config),
        example[:1],
        tune=(lambda m, s, f: measure_forms(m, s, f, config)) if autotune else None,
        estimate=lambda m, s, f: estimate_forms(m, s, f, config),
    )
    fold_limit = _fold_limit(model)

    with torch.no_grad():
        ep = _torch_export(model, example, config)
    onnx_model = _to_onnx(ep, config, fold_limit)
    onnx_model = _simplify(onnx_model, config.simplify, fold_limit)
    _rename_batch_axes(onnx_model, config)
    onnx.helper.set_model_props(onnx_model, metadata.props(layers))

    report = ExportReport(path=str(path), opset=config.opset, layers=layers)
    report.input_shape = _shape(onnx_model.graph.input[0])
    report.output_shape = _shape(onnx_model.graph.output[0])
    report.op_counts = dict(collections.Counter(n.op_type for n in onnx_model.graph.node))
    report.param_bytes = sum(
        onnx.numpy_helper.to_array(t).nbytes for t in onnx_model.graph.initializer
    )
    failures = []
    if config.check:
        failures = _check(onnx_model, model, samples, config, report)
    target = path if not failures else path.with_name(f"{path.stem}.failed.onnx")
    _write_onnx(onnx_model, target)
    report.file_bytes = target.stat().st_size
    report.ok = not failures
    report.export_seconds = round(time.perf_counter() - start, 2)
    report.path = str(target)
    atomic_write_text(f"{target}.report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    if failures:
        raise ExportError(f"export check failed ({'; '.join(failures)}); graph kept at {target}")
    return report


def _check_output_path(path: Path) -> None:
    """Fail before the export runs when the file could not be written anyway."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the .onnx file to write")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: {parent} is not writable")


def _batch_of(samples: torch.Tensor, batch: int) -> torch.Tensor:
    """Exactly `batch` rows of `samples`, repeating them when there are fewer."""
    reps = math.ceil(batch / len(samples))
    return samples.repeat(reps, *([1] * (samples.ndim - 1)))[:batch].contiguous()


def _check(
    onnx_model: onnx.ModelProto,
    model: nn.Module,
    samples: torch.Tensor,
    config: ExportConfig,
    report: ExportReport,
) -> list[str]:
    from kompakt.runtime.backends.base import require

    ort = require("onnxruntime", "cpu", "checking the export against PyTorch")
    failures = []
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as error:
        failures.append(f"onnx.checker: {str(error).splitlines()[0]}")
    if config.batch == "dynamic":
        try:
            _assert_symbolic_batch(onnx_model)
        except ExportError as error:
            failures.append(str(error))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    batches = [1, min(8, config.max_batch)] if config.batch == "dynamic" else [config.batch]
    for batch in batches:
        x = _batch_of(samples, batch)
        with torch.no_grad():
            reference = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        result = _compare(reference, got, "onnxruntime-cpu", batch)
        report.parity.append(result)
        if result["max_rel"] > config.rtol:
            failures.append(
                f"parity at batch {batch}: max rel error {result['max_rel']:.3g} > {config.rtol:g}"
            )
    params = sum(int(np.prod(t.dims)) for t in onnx_model.graph.initializer)
    if params <= REFERENCE_EVALUATOR_MAX_PARAMS:
        from onnx.reference import ReferenceEvaluator

        x = _batch_of(samples, batches[0])
        with torch.no_grad():
            reference = model(x).numpy()
        got = ReferenceEvaluator(onnx_model).run(None, {"input": x.numpy()})[0]
        result = _compare(reference, got, "onnx.reference", batches[0])
        report.reference_evaluator = result
        if result["max_rel"] > config.rtol:
            failures.append(f"onnx.reference max rel error {result['max_rel']:.3g}")
    lint = lint_trt(onnx_model)
    report.trt_lint = lint.to_dict()
    return failures
