"""MetaHead: a Linear -> G small FCs over feature groups + Meta(G, M) mixing (Kondaurova &
Semenov)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kompakt.compression.base import COMPRESSIONS, Compression, Replacement, params, rel_error
from kompakt.errors import ConfigError
from kompakt.layers import MetaHead


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


@COMPRESSIONS.register("meta")
class MetaHeadCompression(Compression):
    """MetaHead for Linear layers, started from the trained weight's block diagonal."""

    config_type = MetaHeadConfig
    produces = (MetaHead,)
    SEARCH_GROUPS = (4, 8)

    def replace(self, module: nn.Module, config: MetaHeadConfig) -> Replacement:
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
        return new, rel_error(new.to_dense().weight.detach(), weight)

    def candidates(self, module: nn.Module) -> list[MetaHeadConfig]:
        """Group counts that divide both sides and keep at most half the weights."""
        if not isinstance(module, nn.Linear):
            return []
        out = []
        for groups in self.SEARCH_GROUPS:
            if module.in_features % groups or module.out_features % groups:
                continue
            twin = MetaHead(module.in_features, module.out_features, groups, groups)
            if params(twin) <= 0.5 * params(module):
                out.append(MetaHeadConfig(groups=groups))
        return out
