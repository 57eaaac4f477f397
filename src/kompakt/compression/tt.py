"""Tensor-Train: Linear -> TTLinear, Conv2d -> TTConv2d, by TT-SVD (Garipov's thesis)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from kompakt.compression.base import COMPRESSIONS, Compression, Replacement, params, rel_error
from kompakt.errors import ConfigError
from kompakt.layers import TTConv2d, TTLinear


@dataclass(frozen=True)
class TTConfig:
    """Replace Linear / Conv2d layers by TTLinear / TTConv2d initialised by TT-SVD.

    Args:
        ranks: rank cap (int) or exact ranks; with `eps` None and ranks None the cap is 8.
        eps: relative Frobenius error bound of each layer's TT-SVD.
        in_modes, out_modes: factorisations, used only for layers whose sizes they fit.
        conv_variant: "tt" (Garipov) or "naive".
        ratio: times fewer parameters for the selected layers together: ranks are spread over
            every selected Linear and Conv2d layer's bonds by greedy error reduction per
            parameter (`kompakt.compression.ranks`).
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


def _fits(modes: tuple[int, ...] | None, size: int) -> tuple[int, ...] | None:
    return tuple(modes) if modes is not None and math.prod(modes) == size else None


def tt_conv_obstacle(conv: nn.Conv2d) -> str | None:
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


@COMPRESSIONS.register("tt")
class TTCompression(Compression):
    """Tensor-Train layers by TT-SVD (ranks, eps or a parameter ratio over every layer)."""

    config_type = TTConfig
    produces = (TTLinear, TTConv2d)
    SEARCH_RANKS = (4, 8, 16)  # rank 2 lost 50-90 % of a trained layer's outputs (mnist5k)

    def replace(self, module: nn.Module, config: TTConfig) -> Replacement:
        ranks = config.ranks if (config.ranks is not None or config.eps is not None) else 8
        if isinstance(module, nn.Linear):
            in_modes = _fits(config.in_modes, module.in_features)
            out_modes = _fits(config.out_modes, module.out_features)
            if (in_modes is None) != (out_modes is None):
                in_modes = out_modes = None
            new = TTLinear.from_dense(module, ranks, config.eps, in_modes, out_modes)
            error = rel_error(new.weight_dense(), module.weight.detach())  # TT-SVD truncation
            if config.rescale:
                _rescale_cores_(new, new.weight_dense(), module.weight)
            return new, error
        if isinstance(module, nn.Conv2d):
            reason = tt_conv_obstacle(module)
            if reason:
                return reason
            new = TTConv2d.from_dense(module, ranks, config.eps, variant=config.conv_variant)
            error = rel_error(new.kernel(), module.weight.detach())  # TT-SVD truncation
            if config.rescale:
                _rescale_cores_(new, new.kernel(), module.weight)
            return new, error
        return None

    def plan(
        self, model: nn.Module, targets: list[tuple[str, nn.Module]], config: TTConfig
    ) -> dict[str, TTConfig]:
        """Per-layer configs with the ranks `allocate_ranks` chose for `config.ratio`, over
        every selected Linear and (TT-able, Garipov-variant) Conv2d."""
        if config.ratio is None:
            return {}
        from kompakt.compression.ranks import allocate_ranks, matrix_modes

        plannable = {
            n: m
            for n, m in targets
            if isinstance(m, nn.Linear)
            or (
                isinstance(m, nn.Conv2d) and config.conv_variant == "tt" and not tt_conv_obstacle(m)
            )
        }
        if not plannable:
            raise ConfigError(
                "tt ratio= spreads ranks over Linear and Conv2d layers; none was selected"
            )
        selected = sum(params(m) for _, m in targets)
        # the selected layers the allocator cannot plan stay as they are; with scope=model
        # every parameter outside the selected layers also counts
        fixed = sum(params(m) for n, m in targets if n not in plannable)
        if config.scope == "model":
            total = params(model)
            budget = total / config.ratio
            fixed += total - selected
            if fixed >= budget:
                raise ConfigError(
                    f"tt ratio={config.ratio} scope=model: the {fixed:,} parameters outside the "
                    f"selected layers already exceed the budget {int(budget):,} (= {total:,} / "
                    f"{config.ratio}); select more layers or ask for a smaller ratio"
                )
        else:
            budget = selected / config.ratio
        ranks = allocate_ranks(plannable, int(budget - fixed))
        plans = {}
        for name, module in plannable.items():
            modes = matrix_modes(module) if isinstance(module, nn.Linear) else (None, None)
            plans[name] = replace(
                config,
                ratio=None,
                scope="layers",
                ranks=ranks[name],
                in_modes=modes[0],
                out_modes=modes[1],
            )
        return plans

    def candidates(self, module: nn.Module) -> list[TTConfig]:
        """Rank caps whose twin keeps at most half the weights."""
        if not isinstance(module, nn.Linear | nn.Conv2d):
            return []
        if isinstance(module, nn.Conv2d) and tt_conv_obstacle(module):
            return []
        out = []
        for rank in self.SEARCH_RANKS:
            twin = _twin_shape(module, rank)
            if params(twin) <= 0.5 * params(module):
                out.append(TTConfig(ranks=rank))
        return out


def _twin_shape(module: nn.Module, rank: int) -> nn.Module:
    """A TT twin with `module`'s shape at rank cap `rank` (random cores: for counting)."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return TTLinear(module.in_features, module.out_features, ranks=rank, bias=bias)
    return TTConv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ranks=rank,
        bias=bias,
    )
