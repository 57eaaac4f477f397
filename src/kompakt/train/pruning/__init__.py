"""Filter pruning: relevance during training (Novikov & Buryak), L1 and Euclidean
baselines, compaction.

Structure comes from a torch.fx trace: every Conv2d (groups=1) is a producer; its output passes
through BatchNorm / activations / pooling / dropout / flatten to consumers (Conv2d in-channels,
or Linear in-features after a flatten); a residual `add` ties the channels of everything that
reaches it into one group (pruned together or not at all). A group's mask zeroes its channels
at the producers' outputs *after* their BatchNorm, which is exactly what removing the channels
does, so `compact_` (physical removal) gives the masked model's outputs.

The package: `graph` (fx channel groups), `criteria` (L1 / Euclidean), `relevance` (Novikov &
Buryak, a training hook), `compact` (masks and physical removal); the resize records that
make a pruned model reload live in `kompakt.models.resize`, the `kompakt prune` workflow in
`train/prune.py`.
"""

from kompakt.models.resize import apply_resizes_, resize_records
from kompakt.train.pruning.compact import MaskedPruning, Masker, apply_masks, compact_
from kompakt.train.pruning.criteria import euclidean_prune, example_input, l1_prune
from kompakt.train.pruning.graph import ChannelGroup, find_groups
from kompakt.train.pruning.relevance import RelevanceConfig, RelevancePruner

__all__ = [
    "ChannelGroup",
    "MaskedPruning",
    "Masker",
    "RelevanceConfig",
    "RelevancePruner",
    "apply_masks",
    "apply_resizes_",
    "compact_",
    "euclidean_prune",
    "example_input",
    "find_groups",
    "l1_prune",
    "resize_records",
]
