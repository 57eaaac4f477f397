"""Filter pruning after training: L1 norm or Euclidean redundancy, filters removed physically.

A whole-model method: channel groups tied by residual adds are pruned together, and the
consumers (next convs, the first Linear after a flatten) lose the matching inputs. The relevance
criterion (Novikov & Buryak) prunes *while* training and lives in
`kompakt.train.pruning.relevance`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kompakt.compression.base import COMPRESSIONS, Compression
from kompakt.errors import ConfigError

CRITERIA = ("l1", "euclidean")


@dataclass(frozen=True)
class PruneConfig:
    """Remove `ratio` of every prunable channel group's filters, chosen by `criterion`."""

    ratio: float = 0.5
    criterion: str = "l1"

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"prune criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"prune ratio must be in (0, 1), got {self.ratio}")


@COMPRESSIONS.register("prune")
class PruneCompression(Compression):
    """Structured filter pruning (L1 / Euclidean), compacted: pruned filters are removed."""

    config_type = PruneConfig
    kind = "channels"
    SEARCH_RATIOS = (0.25, 0.5)

    def apply_(self, model: nn.Module, config: PruneConfig, example: torch.Tensor) -> list[dict]:
        # train.pruning imports the model package, which imports this registry: import late
        from kompakt.train.pruning import euclidean_prune, l1_prune

        if config.criterion == "l1":
            pruning = l1_prune(model, config.ratio, example=example)
        else:
            pruning = euclidean_prune(model, ratio=config.ratio, example=example)
        if not len(pruning):
            pruning.undo()
            raise ConfigError(
                f"{type(model).__name__} has no prunable channel group (every conv's output "
                "reaches an op filter pruning cannot follow, or the model output)"
            )
        return pruning.compact()

    def candidates(self, module: nn.Module) -> list[PruneConfig]:
        return [PruneConfig(ratio=r) for r in self.SEARCH_RATIOS]
