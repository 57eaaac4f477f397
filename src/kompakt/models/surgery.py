"""Compression surgery on any nn.Module: replace Linear / Conv2d layers by compressed twins.

`compress_(model, config, filter_fn)` is how a user compresses their *own* trained model; the
replaced layers are recorded by `layer_specs(model)` so a checkpoint can rebuild the exact
architecture from the registries (`apply_layer_specs_`) without pickling code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.layers import LAYERS, CompressedLayer, MetaHead, TTConv2d, TTLinear
from kompakt.models.common import set_submodule


@dataclass(frozen=True)
class TTConfig:
    """Replace Linear / Conv2d layers by TTLinear / TTConv2d initialised by TT-SVD.

    Args:
        ranks: rank cap (int) or exact ranks; with `eps` None and ranks None the cap is 8.
        eps: relative Frobenius error bound of each layer's TT-SVD.
        in_modes, out_modes: factorisations, used only for layers whose sizes they fit.
        conv_variant: "tt" (Garipov) or "naive".
        ratio: times fewer parameters for the selected layers together: ranks are spread over
            their Linear layers' bonds by greedy error reduction per parameter
            (`kompakt.models.ranks`); convolutions keep the `ranks` cap (default 8) and count
            against the budget.
        scope: what `ratio` counts: "layers" (the selected layers) or "model" (every parameter
            of the model, so the layers that stay dense, BatchNorm and biases included, come
            out of the same budget).
        rescale: scale each truncated layer back to the dense weight's Frobenius norm, so the
            activations keep their scale for fine-tuning (a rank-8 TT of a trained 6272x1536
            layer keeps ~1 % of its energy, and the net then starts from a dead signal). The
            report's weight error is the TT-SVD truncation error, before this scaling.
    """

    ranks: int | tuple[int, ...] | None = None
    eps: float | None = None
    in_modes: tuple[int, ...] | None = None
    out_modes: tuple[int, ...] | None = None
    conv_variant: str = "tt"
    rescale: bool = True
    ratio: float | None = None
    scope: str = "layers"

    def __post_init__(self) -> None:
        if self.scope not in ("layers", "model"):
            raise ConfigError(f"scope must be 'layers' or 'model', got {self.scope!r}")
        if self.scope == "model" and self.ratio is None:
            raise ConfigError(
                "tt scope=model needs a ratio= (what the whole model should shrink by)"
            )
        if self.ratio is not None:
            if not self.ratio > 1:
                raise ConfigError(f"ratio must be > 1 (times fewer parameters), got {self.ratio}")
            if self.eps is not None:
                raise ConfigError("give tt a ratio or an eps, not both")


@dataclass(frozen=True)
class MetaHeadConfig:
    """Replace Linear layers by MetaHead (G small FCs -> Meta(G, M))."""

    groups: int
    meta_out: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.groups < 1 or (self.meta_out is not None and self.meta_out < 1):
            raise ConfigError(
                f"meta needs groups >= 1 and meta_out >= 1, got groups={self.groups}, "
                f"meta_out={self.meta_out}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"meta dropout is a fraction in [0, 1), got {self.dropout}")


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


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _rel_error(new: torch.Tensor, old: torch.Tensor) -> float:
    return (torch.linalg.norm(new - old) / torch.linalg.norm(old).clamp_min(1e-30)).item()


def _fits(modes: tuple[int, ...] | None, size: int) -> tuple[int, ...] | None:
    return tuple(modes) if modes is not None and math.prod(modes) == size else None


# config type -> handler(module, config) -> (replacement, relative weight error), or a reason
# the module cannot be converted (None: a module type the compression does not handle)
Replacement = tuple[nn.Module, float] | str | None
COMPRESSIONS: dict[type, Callable[[nn.Module, object], Replacement]] = {}
COMPRESSION_NAMES: dict[str, type] = {}  # "tt" -> TTConfig, for `--compress tt:ranks=8`


def register_compression(config_type: type, name: str) -> Callable:
    """Register the handler that compresses one module for `config_type` (torchao-style):
    `compress_(model, config_type(...))` then calls it on every selected layer, and
    `--compress NAME:key=value,...` builds the config."""

    def decorate(handler: Callable) -> Callable:
        COMPRESSIONS[config_type] = handler
        COMPRESSION_NAMES[name] = config_type
        return handler

    return decorate


def parse_compression(text: str) -> object:
    """'tt:ranks=8', 'tt:eps=0.1,ranks=16', 'meta:groups=4,meta_out=2' -> a config object.

    Values become int, float or bool by their spelling; the config's own validation judges them.
    """
    kind, _, rest = text.partition(":")
    if kind not in COMPRESSION_NAMES:
        choices = ", ".join(f"'{n}:'" for n in sorted(COMPRESSION_NAMES))
        raise ConfigError(f"--compress must start with one of {choices}, got {text!r}")
    values: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--compress expects key=value pairs after 'kind:', got {item!r}")
        values[key.strip()] = _parse_value(value.strip())
    try:
        return COMPRESSION_NAMES[kind](**values)
    except TypeError as error:
        raise ConfigError(f"--compress {text!r}: {error}") from None


def _parse_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@register_compression(TTConfig, "tt")
def _tt_replacement(module: nn.Module, config: TTConfig) -> Replacement:
    ranks = config.ranks if (config.ranks is not None or config.eps is not None) else 8
    if isinstance(module, nn.Linear):
        in_modes = _fits(config.in_modes, module.in_features)
        out_modes = _fits(config.out_modes, module.out_features)
        if (in_modes is None) != (out_modes is None):
            in_modes = out_modes = None
        new = TTLinear.from_dense(module, ranks, config.eps, in_modes, out_modes)
        error = _rel_error(new.weight_dense(), module.weight.detach())  # TT-SVD truncation
        if config.rescale:
            _rescale_cores_(new, new.weight_dense(), module.weight)
        return new, error
    if isinstance(module, nn.Conv2d):
        reason = _tt_conv_obstacle(module)
        if reason:
            return reason
        new = TTConv2d.from_dense(module, ranks, config.eps, variant=config.conv_variant)
        error = _rel_error(new.kernel(), module.weight.detach())  # TT-SVD truncation
        if config.rescale:
            _rescale_cores_(new, new.kernel(), module.weight)
        return new, error
    return None


def _tt_conv_obstacle(conv: nn.Conv2d) -> str | None:
    """Why a Conv2d cannot become a TTConv2d (None when it can)."""
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups}); TT-conv needs groups=1"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}; TT-conv needs numeric padding"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}; TT-conv pads with zeros only"
    if conv.in_channels < 4:
        return f"{conv.in_channels} input channels; TT-conv needs >= 4 to factorise them"
    return None


def _rescale_cores_(layer: nn.Module, approx: torch.Tensor, dense: torch.Tensor) -> None:
    ratio = (torch.linalg.norm(dense) / torch.linalg.norm(approx).clamp_min(1e-30)).item()
    factor = ratio ** (1.0 / len(layer.cores))
    with torch.no_grad():
        for core in layer.cores:
            core.mul_(factor)


@register_compression(MetaHeadConfig, "meta")
def _meta_replacement(module: nn.Module, config: MetaHeadConfig) -> Replacement:
    if not isinstance(module, nn.Linear):
        return None
    groups, meta_out = config.groups, config.meta_out or config.groups
    if module.in_features % groups or module.out_features % meta_out:
        return (
            f"{module.in_features} -> {module.out_features} features do not divide into "
            f"{groups} groups / meta_out {meta_out}"
        )
    weight = module.weight.detach()
    new = MetaHead(
        module.in_features,
        module.out_features,
        groups,
        meta_out,
        config.dropout,
        bias=module.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    if meta_out == groups:
        # Start from the block diagonal of the trained weight, with Meta as the identity.
        g_in, g_out = new.grouped.group_in, new.grouped.group_out
        with torch.no_grad():
            for g in range(groups):
                block = weight[g * g_out : (g + 1) * g_out, g * g_in : (g + 1) * g_in]
                new.grouped.weight[g].copy_(block.t())
                if module.bias is not None:
                    new.grouped.bias[g].copy_(module.bias[g * g_out : (g + 1) * g_out])
            new.meta.weight.copy_(torch.eye(groups, dtype=weight.dtype))
    return new, _rel_error(new.to_dense().weight.detach(), weight)


# what each compression makes, so a model compressed before can be compressed again (e.g. to
# lower TT ranks): those layers are first made dense again (`densify_`)
REMAKES: dict[type, tuple[type, ...]] = {
    TTConfig: (TTLinear, TTConv2d),
    MetaHeadConfig: (MetaHead,),
}


def densify_(model: nn.Module, config: object) -> list[str]:
    """Replace, in place, the layers `config`'s compression makes (TTLinear / TTConv2d for
    TTConfig, MetaHead for MetaHeadConfig) by their dense equivalents; returns their names.
    `compress_` can then compress them again: a TT model re-compressed at lower ranks gets the
    TT-SVD of its own weights (what TT rounding computes), so each rank step of a gradual
    compression starts from the previous one. Dense weights are materialised one layer at a
    time."""
    kinds = REMAKES.get(type(config), ())
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
    config: object,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    calib: torch.Tensor | None = None,
    refine_steps: int = 100,
    sequential: bool = True,
) -> CompressionReport:
    """Replace, in place, the Linear / Conv2d layers `filter_fn` selects by compressed twins.

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
    build = COMPRESSIONS.get(type(config))
    if build is None:
        names = ", ".join(t.__name__ for t in COMPRESSIONS)
        raise ConfigError(
            f"config must be one of {names} (see register_compression), got {type(config).__name__}"
        )
    select = filter_fn or default_filter
    report = CompressionReport()
    targets = [(n, m) for n, m in model.named_modules() if n and select(n, m)]
    per_layer = _ratio_plan(model, targets, config) if getattr(config, "ratio", None) else {}
    recorded = _record_io(model, [m for _, m in targets], calib) if calib is not None else {}
    replacements = []
    for name, module in targets:
        try:
            result = build(module, per_layer.get(name, config))
        except (ValueError, RuntimeError) as error:
            raise ConfigError(
                f"cannot compress layer {name!r} ({type(module).__name__}): {error}; the model "
                "is unchanged"
            ) from error
        if not isinstance(result, tuple):
            reason = result or f"{type(module).__name__} is not handled by {type(config).__name__}"
            report.skipped.append({"name": name, "reason": reason})
            continue
        new, error = result
        before, after = _params(module), _params(new)
        if filter_fn is None and after > 0.9 * before:
            report.skipped.append(
                {"name": name, "reason": f"the twin would keep {after / before:.0%} of the weights"}
            )
            continue
        if after > before:
            warnings.warn(
                f"compressed {name} has more parameters than the dense layer ({after:,} > "
                f"{before:,}); lower the ranks",
                stacklevel=2,
            )
        replacements.append((name, module, new, error))
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
                    "params_before": _params(module),
                    "params_after": _params(new),
                    "rel_error": error,
                    **fitted,
                }
            )
    except BaseException:
        for name, module in reversed(replaced):  # all or nothing, also when fitting fails
            set_submodule(model, name, module)
        raise
    if recorded and replaced:
        report.batchnorm_recalibrated = recalibrate_batchnorm_(model, calib)
    return report


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
        return _rel_error(module(x), y)


FIT_ROWS = 50_000  # output rows (samples x positions) the fit uses at most


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

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = (layer(x_fit) - y_fit).pow(2).mean() / scale
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


def _ratio_plan(
    model: nn.Module, targets: list[tuple[str, nn.Module]], config: TTConfig
) -> dict[str, TTConfig]:
    """Per-Linear configs with the ranks `allocate_ranks` chose for `config.ratio`."""
    from kompakt.models.ranks import allocate_ranks, matrix_modes

    linears = {n: m for n, m in targets if isinstance(m, nn.Linear)}
    if not linears:
        raise ConfigError("tt ratio= spreads ranks over Linear layers; none was selected")
    selected = sum(_params(m) for _, m in targets)
    # what the other selected layers will hold: convs at the rank cap, the rest as is; with
    # scope=model also every parameter outside the selected layers
    fixed = 0
    if config.scope == "model":
        total = _params(model)
        budget = total / config.ratio
        fixed = total - selected
        if fixed >= budget:
            raise ConfigError(
                f"tt ratio={config.ratio} scope=model: the {fixed:,} parameters outside the "
                f"selected layers already exceed the budget {int(budget):,} (= {total:,} / "
                f"{config.ratio}); select more layers or ask for a smaller ratio"
            )
    else:
        budget = selected / config.ratio
    for _, module in targets:
        if isinstance(module, nn.Linear):
            continue
        if isinstance(module, nn.Conv2d) and not _tt_conv_obstacle(module):
            twin = TTConv2d(  # the cores' shapes, without running TT-SVD twice
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                ranks=config.ranks or 8,
                bias=module.bias is not None,
                variant=config.conv_variant,
            )
            fixed += _params(twin)
        else:
            fixed += _params(module)
    ranks = allocate_ranks(linears, int(budget - fixed))
    plans = {}
    for name, module in linears.items():
        in_modes, out_modes = matrix_modes(module)
        plans[name] = replace(
            config,
            ratio=None,
            scope="layers",
            ranks=ranks[name],
            in_modes=in_modes,
            out_modes=out_modes,
        )
    return plans


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
