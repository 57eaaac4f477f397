"""Compression surgery on any nn.Module: replace Linear / Conv2d layers by compressed twins.

`compress_(model, config, filter_fn)` is how a user compresses their *own* trained model; the
replaced layers are recorded by `layer_specs(model)` so a checkpoint can rebuild the exact
architecture from the registries (`apply_layer_specs_`) without pickling code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from kompakt.compression import Compression, compression_for, name_of
from kompakt.compression.base import params, rel_error
from kompakt.errors import ConfigError
from kompakt.layers import LAYERS, CompressedLayer
from kompakt.models.common import set_submodule


@dataclass
class CompressionReport:
    """Per replaced layer: old / new parameters and the relative weight error; per selected
    layer that was not replaced: why (`skipped`)."""

    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    batchnorm_recalibrated: int = 0

    @property
    def params_before(self) -> int:
        return sum(row["params_before"] for row in self.layers)

    @property
    def params_after(self) -> int:
        return sum(row["params_after"] for row in self.layers)

    def __str__(self) -> str:
        lines = [
            f"{'layer':<28} {'kind':<12} {'params':>10} {'->':>2} {'new':>9} {'weight err':>10}"
            f" {'output err (svd -> fitted, held-out)':>38}"
        ]
        for row in self.layers:
            output = ""
            if row.get("output_error") is not None:
                output = f"{row['output_error_svd']:.4f} -> {row['output_error']:.4f}"
            lines.append(
                f"{row['name']:<28} {row['kind']:<12} {row['params_before']:>10} -> "
                f"{row['params_after']:>9} {row['rel_error']:>10.4f} {output:>38}"
            )
        lines.append(
            f"{len(self.layers)} layers replaced: {self.params_before} -> {self.params_after}"
        )
        lines += [f"not replaced: {row['name']}: {row['reason']}" for row in self.skipped]
        if self.batchnorm_recalibrated:
            lines.append(
                f"{self.batchnorm_recalibrated} BatchNorm layers re-estimated on the calibration "
                "samples"
            )
        return "\n".join(lines)


def _layer_compression(config: object) -> Compression:
    compression = compression_for(config)
    if compression.kind != "layer":
        raise ConfigError(
            f"{name_of(type(config))} compresses the whole model, not single layers: use its "
            "apply_ (kompakt prune / kompakt optimize), not compress_"
        )
    return compression


def densify_(model: nn.Module, config: object) -> list[str]:
    """Replace, in place, the layers `config`'s compression makes (TTLinear / TTConv2d for
    TTConfig, MetaHead for MetaHeadConfig) by their dense equivalents; returns their names.
    `compress_` can then compress them again: a TT model re-compressed at lower ranks gets the
    TT-SVD of its own weights (what TT rounding computes), so each rank step of a gradual
    compression starts from the previous one. Dense weights are materialised one layer at a
    time."""
    kinds = compression_for(config).produces
    names = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
    for name in names:
        layer = model.get_submodule(name)
        dense = layer.to_dense()
        dense.train(layer.training)
        set_submodule(model, name, dense)
    return names


MIN_PARAMS = 16_384


def default_filter(name: str, module: nn.Module) -> bool:
    """Linear / Conv2d layers with at least MIN_PARAMS weights (smaller ones, like a 512 -> 10
    classifier, gain little and lose the most); `compress_` also drops those that would not
    shrink."""
    return isinstance(module, nn.Linear | nn.Conv2d) and module.weight.numel() >= MIN_PARAMS


def compress_(
    model: nn.Module,
    config: object | dict[str, object],
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    calib: torch.Tensor | None = None,
    refine_steps: int = 100,
    sequential: bool = True,
) -> CompressionReport:
    """Replace, in place, the Linear / Conv2d layers `filter_fn` selects by compressed twins.

    `config` is one registered method's config (`kompakt.compression`: TTConfig,
    MetaHeadConfig, a plugin's), applied to every selected layer (a budget such as
    `TTConfig(ratio=10)` is first spread over them by the method's `plan`), or a per-layer plan
    {layer name: config} that may mix methods (what `kompakt optimize` builds).

    All or nothing: every selected layer is converted first, and the model is changed only when
    all conversions succeeded (an error names the layer and leaves the model as it was). A
    selected layer that cannot be converted (e.g. a grouped conv for TT) is listed in
    `report.skipped` with the reason. With the default filter a layer is replaced only if the
    twin has at most 90 % of its parameters; a user's `filter_fn` is obeyed as given, with a
    warning when a twin is larger than its dense layer.

    With `calib` (model inputs, e.g. a few hundred training samples) each compressed layer is
    then fitted to reproduce the dense layer's outputs on those samples' activations (L-BFGS on
    the output MSE, `refine_steps` iterations from the TT-SVD start), which is what the network
    downstream sees; the weight-error-optimal TT-SVD is only the starting point. The report
    gives each layer's relative output error on held-out activations before and after. With
    `sequential` (the default) the layers are fitted in order, each on the inputs it gets from
    the model with the layers before it already compressed (targets stay the dense model's
    outputs), so errors do not pile up through the network (the report's output error is then
    measured on those inputs: it includes what the layers before left). Every BatchNorm is
    then re-estimated on `calib` (`recalibrate_batchnorm_`).

    Returns:
        a CompressionReport (per layer: old / new parameters, relative weight error; skipped
        layers with their reasons).
    """
    targets, per_layer, filter_fn = _targets(model, config, filter_fn)
    report = CompressionReport()
    recorded = _record_io(model, [m for _, m in targets], calib) if calib is not None else {}
    replacements = _twins(targets, per_layer, config, filter_fn is None, report)
    replaced = _swap_in_(model, replacements, recorded, calib, sequential, refine_steps, report)
    if recorded and replaced:
        report.batchnorm_recalibrated = recalibrate_batchnorm_(model, calib)
    return report


def _targets(model: nn.Module, config, filter_fn):
    """(selected (name, module) pairs, {name: config}, the filter in force) for one method's
    config (its `plan` spreads a budget) or a per-layer plan {name: config}."""
    if isinstance(config, dict):  # a per-layer plan: {layer name: config}
        plan = dict(config)
        targets = [(n, m) for n, m in model.named_modules() if n in plan]
        missing = sorted(set(plan) - {n for n, _ in targets})
        if missing:
            raise ConfigError(f"compress_ plan names layers the model does not have: {missing}")
        return targets, plan, filter_fn or (lambda name, module: name in plan)
    select = filter_fn or default_filter
    targets = [(n, m) for n, m in model.named_modules() if n and select(n, m)]
    return targets, _layer_compression(config).plan(model, targets, config), filter_fn


def _twins(targets, per_layer, config, default_filter_used: bool, report) -> list[tuple]:
    """Every selected layer's twin, before anything in the model changes: (name, module, twin,
    weight error); layers that cannot be converted or would not shrink go to report.skipped."""
    replacements = []
    for name, module in targets:
        layer_config = per_layer.get(name, config)
        try:
            result = _layer_compression(layer_config).replace(module, layer_config)
        except (ValueError, RuntimeError) as error:
            raise ConfigError(
                f"cannot compress layer {name!r} ({type(module).__name__}): {error}; the model "
                "is unchanged"
            ) from error
        if not isinstance(result, tuple):
            reason = result or (
                f"{type(module).__name__} is not handled by {type(layer_config).__name__}"
            )
            report.skipped.append({"name": name, "reason": reason})
            continue
        new, error = result
        before, after = params(module), params(new)
        if default_filter_used and after > 0.9 * before:
            report.skipped.append(
                {"name": name, "reason": f"the twin would keep {after / before:.0%} of the weights"}
            )
            continue
        if after > before:
            warnings.warn(
                f"compressed {name} has more parameters than the dense layer ({after:,} > "
                f"{before:,}); lower the ranks",
                stacklevel=3,
            )
        replacements.append((name, module, new, error))
    return replacements


def _swap_in_(model, replacements, recorded, calib, sequential, refine_steps, report) -> list:
    """Fit each twin to its dense layer's outputs (when activations were recorded) and put it
    in place, in order; any failure puts every dense layer back (all or nothing)."""
    replaced: list[tuple[str, nn.Module]] = []
    try:
        for name, module, new, error in replacements:
            fitted = {}
            if id(module) in recorded:
                x, y = recorded[id(module)]
                if sequential and replaced:
                    # what this layer sees once the layers before it are compressed: fitting
                    # to the dense outputs from there also undoes their remaining error
                    x = _record_io(model, [module], calib)[id(module)][0]
                fitted = fit_outputs_(new, x, y, steps=refine_steps)
            new.train(module.training)
            set_submodule(model, name, new)
            replaced.append((name, module))
            report.layers.append(
                {
                    "name": name,
                    "kind": _layer_name(new) or type(new).__name__,
                    "params_before": params(module),
                    "params_after": params(new),
                    "rel_error": error,
                    **fitted,
                }
            )
    except BaseException:
        for name, module in reversed(replaced):  # all or nothing, also when fitting fails
            set_submodule(model, name, module)
        raise
    return replaced


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, inputs: torch.Tensor, batch: int = 128) -> int:
    """Re-estimate every BatchNorm's running mean / variance on `inputs` (the model otherwise in
    eval mode, so dropout stays off); returns how many were updated. After compression the
    layers feed BatchNorms activations that differ a little from the trained ones: on mnist5k
    this adds 0.1-0.7 points before any fine-tune (benchmarks/compress_trained.py)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(inputs) < 2:
        return 0
    was_training = model.training
    saved = [(m.momentum, m.training) for m in norms]
    model.eval()
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over all the batches
            norm.train()
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            if len(chunk) > 1:
                model(chunk)
    finally:
        for norm, (momentum, training) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.train(training)
        model.train(was_training)
    return len(norms)


@torch.no_grad()
def _record_io(model: nn.Module, modules: list[nn.Module], calib: torch.Tensor) -> dict:
    """Each module's inputs and outputs when the (still dense) model runs on `calib`."""
    store: dict[int, tuple[list, list]] = {id(m): ([], []) for m in modules}

    def hook(module, inputs, output):
        store[id(module)][0].append(inputs[0].detach())
        store[id(module)][1].append(output.detach())

    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(calib), 128):
            model(calib[start : start + 128])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {k: (torch.cat(x), torch.cat(y)) for k, (x, y) in store.items() if x}


def _output_error(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return rel_error(module(x), y)


FIT_ROWS = 50_000  # output rows (samples x positions) the fit uses at most


DENSE_FIT_ELEMENTS = 4_000_000  # rebuilt weights up to this size are cheap to differentiate


def _fast_forward(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same function as `layer(x)`, computed through its rebuilt dense weight where that is
    small: a TT-linear's chain of small core contractions on a ViT's 1,600 token rows cost
    24 ms a call against ~1 ms for one GEMM, and L-BFGS calls it ~100 times per layer."""
    rebuild = getattr(layer, "weight_dense", None)
    if not callable(rebuild):
        return layer
    size = getattr(layer, "in_features", 0) * getattr(layer, "out_features", 0)
    if not 0 < size <= DENSE_FIT_ELEMENTS:
        return layer
    return lambda x: F.linear(x, rebuild(), getattr(layer, "bias", None))


def fit_outputs_(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> dict:
    """Fit `layer` in place to reproduce `y` from `x` (the dense layer's activations): L-BFGS
    on the relative output MSE over 80 % of the samples (full batch: a smooth least-squares
    problem that it solves in tens of iterations, where Adam needs thousands); the other 20 %
    measure the relative output error before and after. Keeps the start if fitting made the
    held-out error worse. Returns {"output_error_svd", "output_error"}."""
    held = max(1, len(x) // 5)
    x_fit, y_fit, x_held, y_held = x[held:], y[held:], x[:held], y[:held]
    # a conv's every output position is a sample: a few dozen images are already tens of
    # thousands of rows, and full-batch L-BFGS over hundreds of feature maps costs minutes
    positions = math.prod(y.shape[2:]) if y.dim() > 2 else 1
    keep = max(16, FIT_ROWS // positions)
    x_fit, y_fit = x_fit[:keep], y_fit[:keep]
    was_training = layer.training
    layer.eval()  # no dropout while fitting
    before = _output_error(layer, x_held, y_held)
    if len(x_fit) == 0 or steps < 1:
        layer.train(was_training)
        return {"output_error_svd": before, "output_error": before}
    start = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    scale = y_fit.pow(2).mean().clamp_min(1e-12)
    optimizer = torch.optim.LBFGS(
        layer.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    forward = _fast_forward(layer)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = (forward(x_fit) - y_fit).pow(2).mean() / scale
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    after = _output_error(layer, x_held, y_held)
    if not after < before:  # includes NaN
        layer.load_state_dict(start)
        after = before
    layer.train(was_training)
    return {"output_error_svd": before, "output_error": after}


def _layer_name(module: nn.Module) -> str | None:
    """The LAYERS registry name of a compressed layer's class, or None."""
    for name in LAYERS.names():
        if type(module) is LAYERS.get(name):
            return name
    return None


def layer_specs(model: nn.Module) -> list[dict]:
    """Records of every compressed layer in `model`: {"name", "type", "args"}.

    Only the outermost ones (a MetaHead rebuilds its own GroupedLinear and Meta). Layers the
    model's own builder creates are recorded too; rebuilding applies them over the fresh model,
    which is a no-op for those.
    """
    specs: list[dict] = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, CompressedLayer):
            continue
        if any(name.startswith(s["name"] + ".") for s in specs):
            continue
        kind = _layer_name(module)
        if kind is None:
            raise ConfigError(
                f"{name}: {type(module).__name__} is a CompressedLayer but not registered in "
                "kompakt.layers.LAYERS; register it so checkpoints can rebuild it"
            )
        specs.append({"name": name, "type": kind, "args": module.init_args()})
    return specs


def apply_layer_specs_(model: nn.Module, specs: list[dict]) -> nn.Module:
    """Rebuild recorded layers in place (fresh parameters; load the state_dict afterwards)."""
    for spec in specs:
        try:
            cls = LAYERS.get(spec["type"])
            model.get_submodule(spec["name"])
            set_submodule(model, spec["name"], cls(**spec["args"]))
        except (KeyError, AttributeError, TypeError) as error:
            raise ConfigError(f"cannot rebuild layer {spec.get('name')!r}: {error}") from None
    return model
