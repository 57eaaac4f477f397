"""Cost tables measured on the target: what every choice costs, before anything is searched.

For each whole-model choice (as trained, or pruned and compacted) the whole model is exported,
quantised where INT8 is searched, and timed in ONNX Runtime at every batch (the base). Then, per
compressible layer, the whole model with only that layer changed to each candidate (in each
export form) is exported, quantised and timed side by side with the base: the layer choice's
cost is the measured difference *in context*, so the quantise / dequantise pairs around a layer
that stays float in an INT8 graph, and the neighbours' layouts, are in the number (timing a
layer alone missed them by 2x at batch 32). A selection's predicted latency is the base plus
the sum of its layers' differences; sizes are the same files' bytes. The accuracy cost of a
layer choice is the relative error of the model's outputs on held-out samples with that one
layer compressed and fitted to its dense outputs (`fit_outputs_`), above the whole-model
choice's own error; errors add up over layers."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kompakt.compression import compression_for
from kompakt.compression.base import rel_error
from kompakt.deploy.quantize import quantize_int8
from kompakt.errors import KompaktError
from kompakt.export.exporter import ExportConfig, export_onnx, fixed_form
from kompakt.models.common import set_submodule
from kompakt.models.surgery import fit_outputs_, recalibrate_batchnorm_
from kompakt.optimize.space import KEEP, ModelChoice, choice_label, layer_configs, timed_forms
from kompakt.progress import progress
from kompakt.timing import burst_medians


@dataclass
class LayerCost:
    """One way to run one layer: seconds per precision per batch, file bytes per precision,
    and the accuracy proxy (added output error)."""

    seconds: dict[str, dict[int, float]]
    bytes: dict[str, int]
    error: float = 0.0
    params: int = 0
    config: object | None = None
    form: str | None = None


@dataclass
class ModelCost:
    """A whole-model choice: the model itself (layers dense) and its layers' options."""

    choice: ModelChoice
    seconds: dict[str, dict[int, float]]
    bytes: dict[str, int]
    error: float
    params: int
    layers: dict[str, dict[str, LayerCost]] = field(default_factory=dict)


@dataclass
class CostTable:
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    models: dict[str, ModelCost]

    def to_json(self) -> dict:
        def seconds(per: dict) -> dict:
            return {p: {str(b): round(t * 1e3, 4) for b, t in v.items()} for p, v in per.items()}

        return {
            "batches": list(self.batches),
            "precisions": list(self.precisions),
            "models": {
                label: {
                    "ms": seconds(m.seconds),
                    "bytes": m.bytes,
                    "error": round(m.error, 5),
                    "params": m.params,
                    "layers": {
                        name: {
                            c: {
                                "ms": seconds(cost.seconds),
                                "bytes": cost.bytes,
                                "error": round(cost.error, 5),
                                "params": cost.params,
                            }
                            for c, cost in choices.items()
                        }
                        for name, choices in m.layers.items()
                    },
                }
                for label, m in self.models.items()
            },
        }


@dataclass(frozen=True)
class ProfileSettings:
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    threads: int | None = None
    fit_steps: int = 20
    runs: int = 30  # timed runs per candidate and batch: 3 rounds of bursts of 10
    methods: tuple[str, ...] | None = None
    quiet: bool = False


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


@torch.no_grad()
def _layer_io(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """Each named layer's inputs and outputs when `model` runs on x."""
    store: dict[str, tuple[list, list]] = {n: ([], []) for n in names}
    handles = []
    for name in names:

        def hook(module, inputs, output, name=name):
            store[name][0].append(inputs[0].detach())
            store[name][1].append(output.detach())

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        _outputs(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return {n: (torch.cat(a), torch.cat(b)) for n, (a, b) in store.items() if a}


class Timer:
    """Exports modules to ONNX (as kompakt exports them), quantises them, and times them side by
    side in ONNX Runtime on this machine."""

    def __init__(self, settings: ProfileSettings, folder: Path) -> None:
        self.settings, self.folder, self.count = settings, folder, 0
        # no simplifier: ONNX Runtime's own graph optimisations run at load either way, and
        # onnxslim costs seconds per whole-model candidate
        self.export_config = ExportConfig(check=False, tt_mode="dense", simplify="none")

    def files(self, module: nn.Module, calib: torch.Tensor) -> dict[str, Path]:
        """{precision: ONNX file} of `module` for inputs shaped like `calib` (which calibrates
        the INT8 graph)."""
        self.count += 1
        fp32 = self.folder / f"m{self.count}.onnx"
        example = calib[:2]
        # compressed layers arrive with their form fixed (fixed_form); the rest are plain.
        # Wrapped: a bare MetaHead as the root trips torch.export ("meta.weight" vs the graph's
        # node meta)
        export_onnx(nn.Sequential(module), fp32, self.export_config, example)
        out = {"fp32": fp32}
        if "int8" in self.settings.precisions:
            int8 = self.folder / f"m{self.count}.int8.onnx"
            try:
                quantize_int8(fp32, int8, calib[:16].numpy())
                out["int8"] = int8
            except KompaktError:
                out["int8"] = fp32  # nothing quantisable: the layer runs in float
        return out

    def time(self, files: dict[str, dict[str, Path]], shape: tuple[int, ...]) -> dict:
        """{key: {precision: {batch: seconds}}} for {key: {precision: file}}, timed in
        interleaved bursts per precision and batch (`burst_medians`: hot caches, as an app's
        loop and `kompakt bench` run them)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.settings.threads:
            options.intra_op_num_threads = self.settings.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        out: dict = {key: {} for key in files}
        rng = np.random.default_rng(0)
        for precision in self.settings.precisions:
            sessions = {
                key: ort.InferenceSession(
                    str(paths[precision]), options, providers=["CPUExecutionProvider"]
                )
                for key, paths in files.items()
            }
            names = {k: s.get_inputs()[0].name for k, s in sessions.items()}
            for batch in self.settings.batches:
                x = rng.standard_normal((batch, *shape)).astype(np.float32)
                calls = {
                    k: (lambda s=s, x=x, n=names[k]: s.run(None, {n: x}))
                    for k, s in sessions.items()
                }
                medians = burst_medians(
                    calls, rounds=3, burst=max(1, self.settings.runs // 3), warmup=2
                )
                for key, seconds in medians.items():
                    out[key].setdefault(precision, {})[batch] = seconds
        return out


def profile(
    model: nn.Module,
    choices: list[ModelChoice],
    calib: torch.Tensor,
    held_out: torch.Tensor,
    settings: ProfileSettings,
) -> CostTable:
    """The cost table of every whole-model choice and, within each, every layer choice."""
    reference = _outputs(model, held_out)
    models = {}
    with tempfile.TemporaryDirectory(prefix="kompakt-optimize-") as tmp:
        timer = Timer(settings, Path(tmp))
        for choice in choices:
            models[choice.label] = _profile_model(model, choice, calib, held_out, reference, timer)
    return CostTable(settings.batches, settings.precisions, models)


def prepared(model: nn.Module, choice: ModelChoice, calib: torch.Tensor) -> nn.Module:
    """A copy of `model` with the whole-model choice applied (pruned and compacted, BatchNorm
    re-estimated on `calib`)."""
    model = copy.deepcopy(model).eval()
    if choice.config is not None:
        compression_for(choice.config).apply_(model, choice.config, calib[:1])
        recalibrate_batchnorm_(model, calib)
    return model.eval()


def _profile_model(model, choice, calib, held_out, reference, timer: Timer) -> ModelCost:
    settings = timer.settings
    model = prepared(model, choice, calib)
    base_error = rel_error(_outputs(model, held_out), reference)
    base_files = timer.files(model, calib)
    cost = ModelCost(choice, {}, {}, base_error, _params(model))
    configs = layer_configs(model, settings.methods)
    io = _layer_io(model, list(configs), calib)
    bar = progress(list(configs), desc=f"profile {choice.label}", quiet=settings.quiet)
    base_seconds: dict[str, dict[int, list[float]]] = {}
    for name in bar:
        if name not in io:
            continue  # not reached by the input
        layer, seconds = _profile_layer(
            model,
            name,
            configs[name],
            io[name],
            calib,
            held_out,
            reference,
            base_error,
            timer,
            base_files,
        )
        cost.layers[name] = layer
        for precision, per in seconds.items():
            for batch, value in per.items():
                base_seconds.setdefault(precision, {}).setdefault(batch, []).append(value)
    if not base_seconds:  # nothing to compress: time the model on its own
        base_seconds = {
            p: {b: [t] for b, t in per.items()}
            for p, per in timer.time({"model": base_files}, tuple(calib.shape[1:]))["model"].items()
        }
    # the base was timed beside every layer's candidates: its median over those runs
    cost.seconds = {
        p: {b: float(np.median(v)) for b, v in per.items()} for p, per in base_seconds.items()
    }
    cost.bytes = {p: f.stat().st_size for p, f in base_files.items()}
    return cost


def _profile_layer(
    model, name, configs, io, calib, held_out, reference, base_error, timer: Timer, base_files
):
    """Each candidate of one layer: fitted, its error measured, the whole model with it
    exported and timed beside the base model. Returns (costs by label, the base's seconds)."""
    dense = model.get_submodule(name)
    x, y = io
    files = {KEEP: base_files}
    costs = {KEEP: LayerCost({}, {}, 0.0, _params(dense))}
    for config in configs:
        twin = compression_for(config).replace(dense, config)
        if not isinstance(twin, tuple):
            continue  # the method cannot convert this layer (its reason is in compress_)
        twin = twin[0]
        fit_outputs_(twin, x, y, steps=timer.settings.fit_steps)
        try:
            set_submodule(model, name, twin)
            error = max(0.0, rel_error(_outputs(model, held_out), reference) - base_error)
            forms = timed_forms(twin, (max(timer.settings.batches), *x.shape[1:]))
            for form in forms:
                # the form is fixed either way; the label names it only when there is a choice
                label = choice_label(config, form if len(forms) > 1 else None)
                set_submodule(model, name, fixed_form(twin, form) if form else twin)
                files[label] = timer.files(model, calib)
                costs[label] = LayerCost({}, {}, error, _params(twin), config, form)
        finally:
            set_submodule(model, name, dense)
    timings = timer.time(files, tuple(calib.shape[1:]))
    base_bytes = {p: f.stat().st_size for p, f in base_files.items()}
    for label, cost in costs.items():
        # in context: the model with this choice minus the model as it is, timed side by side
        cost.seconds = {
            p: {b: t - timings[KEEP][p][b] for b, t in per.items()}
            for p, per in timings[label].items()
        }
        cost.bytes = {p: f.stat().st_size - base_bytes[p] for p, f in files[label].items()}
    return costs, timings[KEEP]


def time_selections(
    model: nn.Module, table: CostTable, selections: list, calib: torch.Tensor, settings
) -> list[dict[int, float]]:
    """Each selection built as a whole model (twins from their method's `replace`, unfitted:
    the weights do not change the time), exported with its forms, quantised at its precision,
    and timed side by side with the others: seconds per batch. What the additive prediction
    estimated, measured (summed per-layer differences carry each one's noise)."""
    files = {}
    with tempfile.TemporaryDirectory(prefix="kompakt-optimize-") as tmp:
        timer = Timer(settings, Path(tmp))
        for i, selection in enumerate(selections):
            built = prepared(model, table.models[selection.model].choice, calib)
            for name, label in selection.layers:
                cost = table.models[selection.model].layers[name][label]
                if cost.config is None:
                    continue
                twin = compression_for(cost.config).replace(built.get_submodule(name), cost.config)
                twin = twin[0]
                set_submodule(built, name, fixed_form(twin, cost.form) if cost.form else twin)
            paths = timer.files(built, calib)
            files[i] = {p: paths[p] for p in settings.precisions}
        timings = timer.time(files, tuple(calib.shape[1:]))
    return [timings[i][s.precision] for i, s in enumerate(selections)]
