"""The `kompakt prune` workflow: prune a trained checkpoint, compact it, fine-tune."""

from __future__ import annotations

from pathlib import Path

import torch

from kompakt.errors import ConfigError
from kompakt.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from kompakt.train.pruning import euclidean_prune, l1_prune
from kompakt.train.pruning.criteria import _check_ratio
from kompakt.train.trainer import TrainConfig, fit

METHODS = ("l1", "euclidean", "relevance")


def prune_checkpoint(
    ckpt: str,
    method: str,
    ratio: float,
    finetune_epochs: int,
    out: str,
    lr: float = 0.01,
    data_root: str | None = None,
    quiet: bool = False,
    seed: int = 0,
    relevance_options: dict | None = None,
) -> dict:
    """Prune a trained checkpoint and fine-tune; writes a compact checkpoint under `out`.

    l1 / euclidean mask `ratio` of each group's filters, compact, then fine-tune; relevance
    fine-tunes with the relevance pruner running until `ratio` of all filters is gone
    (`relevance_options`: RelevanceConfig fields such as allocation or dummies).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    _check_ratio(ratio)
    source = load_checkpoint(ckpt)
    data = source["data"]
    common = {
        "data": data["name"],
        "data_root": data_root or data.get("root"),
        "lr": lr,
        "out": out,
        "quiet": quiet,
        "seed": seed,
    }
    if relevance_options and method != "relevance":
        raise ConfigError(f"relevance options do not apply to {method!r} pruning")
    if method == "relevance":
        if finetune_epochs < 1:
            raise ConfigError(
                "relevance pruning needs --finetune-epochs >= 1 (it prunes while training)"
            )
        return fit(
            TrainConfig(
                init_from=ckpt,
                epochs=finetune_epochs,
                prune="relevance",
                prune_target=ratio,
                prune_options=dict(relevance_options or {}),
                **common,
            )
        )
    model = model_from_checkpoint(source)
    example = torch.zeros(1, *data["input_shape"])
    pruning = (
        l1_prune(model, ratio, example=example)
        if method == "l1"
        else euclidean_prune(model, ratio=ratio, example=example)
    )
    spec = dict(source["model"])
    spec["resized"] = pruning.compact()
    pruned = {
        **source,
        "model": spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": {"pruned_from": str(ckpt), "method": method, "ratio": ratio},
    }
    path = Path(out) / "pruned.pt"
    save_checkpoint(pruned, path)
    if finetune_epochs < 1:
        return {"out": out, "best": str(path), "params": sum(p.numel() for p in model.parameters())}
    return fit(TrainConfig(init_from=str(path), epochs=finetune_epochs, **common))
