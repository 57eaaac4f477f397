"""The search space of `kompakt optimize`, read from the Compression registry: per prunable model
the channel methods' options (e.g. prune 25 % / 50 % of the filters), per compressible layer the
layer methods' candidates in each export form worth timing, and the engine precisions. No
method is named here: a registered plugin with `candidates` joins the search by itself."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from kompakt.compression import COMPRESSIONS, Compression, compression_for
from kompakt.layers import CompressedLayer
from kompakt.models.surgery import default_filter

KEEP = "keep"  # the layer stays as it is (dense)
NO_PRUNE = "none"
# export forms that can only lose to keeping the layer dense (same multiply-adds as the dense
# layer plus a rebuild, or the dense weights themselves), so timing them is wasted
DOMINATED_FORMS = ("dense",)


@dataclass(frozen=True)
class ModelChoice:
    """A whole-model transform applied first (None = the model as trained)."""

    label: str
    config: object | None = None


def _methods(names: tuple[str, ...] | None, kind: str) -> list[tuple[str, Compression]]:
    chosen = names or tuple(COMPRESSIONS.names())
    found = [(n, COMPRESSIONS.get(n)()) for n in chosen]  # unknown names list the valid ones
    return [(n, m) for n, m in found if m.kind == kind]


def model_choices(
    model: nn.Module, methods: tuple[str, ...] | None, ratios: tuple[float, ...] | None = None
) -> list[ModelChoice]:
    """Keep the model as is, plus every channel method's candidates (with `ratios`, the
    method's first candidate at each of those ratios instead)."""
    choices = [ModelChoice(NO_PRUNE)]
    for _, method in _methods(methods, "channels"):
        configs = method.candidates(model)
        if ratios is not None and configs and hasattr(configs[0], "ratio"):
            configs = [dataclasses.replace(configs[0], ratio=r) for r in ratios]
        choices += [ModelChoice(method.describe(c), c) for c in configs]
    return choices


def layer_configs(model: nn.Module, methods: tuple[str, ...] | None) -> dict[str, list[object]]:
    """Per compressible layer (default filter: Linear / Conv2d with >= 16,384 weights) every
    layer method's candidate configs; layers no method has a candidate for are left out."""
    out: dict[str, list[object]] = {}
    layer_methods = _methods(methods, "layer")
    for name, module in model.named_modules():
        if not name or not default_filter(name, module):
            continue
        configs = [c for _, method in layer_methods for c in method.candidates(module)]
        if configs:
            out[name] = configs
    return out


TIMED_FORMS = 1  # forms timed per candidate: the fewest multiply-adds, plus "factored"


def timed_forms(twin: nn.Module, input_shape: tuple[int, ...]) -> list[str | None]:
    """The export forms of a twin worth timing (None: not a CompressedLayer, one way into
    ONNX): the TIMED_FORMS named base forms with the fewest multiply-adds at `input_shape`
    (ties: the later-listed, e.g. TT-conv's "lowered" over "separable", whose in-graph kernel
    INT8 cannot quantise), plus "factored" (the smallest file); never "dense", which can only
    lose to keeping the layer dense, nor contraction-plan variants ("factored[...]", the
    exporter's auto picks those). A twin's form is always named, so the exporter never
    re-decides it."""
    if not isinstance(twin, CompressedLayer):
        return [None]
    forms = [f for f in twin.export_forms() if "[" not in f and f not in DOMINATED_FORMS]
    if len(forms) < 2:
        return forms or [twin.export_forms()[0]]
    costs = twin.export_costs(input_shape)
    ranked = sorted(forms, key=lambda f: (costs.get(f, math.inf), -forms.index(f)))
    keep = set(ranked[:TIMED_FORMS]) | ({"factored"} & set(forms))
    return [f for f in forms if f in keep]


def choice_label(config: object, form: str | None) -> str:
    return compression_for(config).describe(config) + (f"@{form}" if form else "")
