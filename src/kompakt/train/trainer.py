"""`fit`: train a zoo model on a registered dataset, with exact resume and optional DDP.

Determinism: every epoch reseeds its shuffling, augmentation and dropout from (seed, epoch), and
checkpoints are written at epoch ends, so a run killed at any point and resumed from `last.pt`
ends with the same weights as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kompakt.data import DataSplits, load_dataset
from kompakt.errors import CheckpointError, ConfigError, KompaktError
from kompakt.layers import CompressedLayer
from kompakt.models import build_model, compress_, layer_specs, parse_compression
from kompakt.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from kompakt.models.registry import canonical_source
from kompakt.models.surgery import MIN_PARAMS, densify_
from kompakt.options import opt
from kompakt.progress import progress
from kompakt.train.pruning import RelevanceConfig, RelevancePruner, compact_


class TrainingDivergedError(KompaktError):
    """The loss became NaN or infinite."""


# optimizer steps a from-scratch run needs to learn something (see default_batch)
MIN_STEPS = 240


@dataclass(frozen=True)
class TrainConfig:
    """Everything `kompakt train` takes; field names are the CLI option and TOML key names."""

    model: str = opt(
        "lenet5",
        "A name from `kompakt list models`, or your own: path/to/file.py:factory or "
        "package.module:Class (called with those of num_classes, in_channels, image_size it "
        "takes, and --model-arg).",
    )
    weights: str | None = opt(
        None,
        "Start from these weights: a state_dict file (or a whole saved nn.Module) of --model, "
        "e.g. from your own training; with --epochs 0 the model is only evaluated and saved as "
        "a kompakt checkpoint that compress / optimize / prune / export take.",
    )
    data: str = opt("digits", "A name from `kompakt data list`.")
    epochs: int = opt(10, "Epochs to train (with --resume: the total, counting the done ones).")
    out: str = opt("runs/train", "Output directory.", aliases=("-o",))
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    model_kwargs: dict = opt(factory=dict, cli=False)  # the CLI spells these --model-arg K=V
    compress: str | None = opt(None, "e.g. tt:ranks=8, tt:eps=0.1, meta:groups=4")
    init_from: str | None = opt(None, "Start from this checkpoint's model and weights.")
    optimizer: Literal["sgd", "adam"] = opt("sgd", "Optimiser.")
    lr: float | None = opt(
        None,
        "Learning rate (the peak, after any warm-up); default 0.05 (sgd; 0.001 for regression; "
        "x sqrt(batch/64) below batch 64; 0.02 fine-tuning a compressed --init-from model) / "
        "1e-3 (adam).",
    )
    momentum: float = opt(0.9, "SGD momentum.")
    weight_decay: float = opt(5e-4, "L2 weight decay.")
    schedule: Literal["cosine", "step", "none"] = opt(
        "cosine", "Learning-rate schedule, stepped every batch."
    )
    warmup_epochs: float | None = opt(
        None,
        "Linear learning-rate warm-up, in epochs (fractions allowed); default 0.3 when "
        "fine-tuning a compressed --init-from model, else 0.",
    )
    distill: bool | None = opt(
        None,
        "Distil from the --init-from model (the teacher) when compressing it; default: on "
        "with --init-from + --compress.",
    )
    teacher: str | None = opt(
        None, "Checkpoint of the distillation teacher (default: the --init-from model)."
    )
    distill_alpha: float = opt(0.9, "Weight of the distillation term (a fraction; rest: labels).")
    distill_temperature: float = opt(4.0, "Softmax temperature of distillation.")
    distill_features: float | None = opt(
        None,
        "Weight of feature matching in distillation: the compressed layers' outputs vs the "
        "teacher's same layers (relative squared error); default 1.0 when distilling, 0: off.",
    )
    calib_samples: int = opt(
        0,
        "With --compress: initialise each compressed layer to match the dense layer's outputs "
        "on this many training samples (0: weight-only TT-SVD).",
    )
    label_smoothing: float = opt(0.0, "Label smoothing for classification.")
    augment: bool | None = opt(None, "Random crop + flip; default on for 32x32 RGB.")
    batch_size: int | None = opt(
        None,
        "Global batch size; default 64, or smaller (down to 8) where the run would otherwise "
        f"make fewer than {MIN_STEPS} optimizer steps (a few epochs of a small dataset).",
    )
    seed: int = opt(0, "Seed of shuffling, augmentation, dropout and init.")
    resume: bool = opt(False, "Continue from OUT/last.pt.")
    nproc: int = opt(1, "DistributedDataParallel processes.")
    quiet: bool = opt(False, "No progress output.")
    prune: Literal["relevance"] | None = opt(
        None, "Filter pruning during training (relevance statistics with dummy filters)."
    )
    prune_target: float = opt(0.6, "Filter sparsity to reach with --prune (a fraction).")
    # RelevanceConfig fields for --prune relevance; the CLI spells these --prune-arg K=V
    prune_options: dict = opt(factory=dict, cli=False)
    stop_on_divergence: bool = opt(
        False, "Stop (instead of warning) when an epoch's train loss exceeds 100x its best."
    )
    resume_override: bool = opt(
        False, "With --resume, apply options that differ from the checkpoint's run."
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "nproc"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if name == "epochs" and value == 0 and self.weights:
                continue  # adopt the weights as they are (evaluate and save)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.weights and self.init_from:
            raise ConfigError("--weights and --init-from both give the starting weights; pick one")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "none"):
            raise ConfigError(f"schedule must be 'cosine', 'step' or 'none', got {self.schedule!r}")
        if self.prune not in (None, "relevance"):
            raise ConfigError(
                f"train --prune takes 'relevance' (pruning during training); for l1/euclidean "
                f"use `kompakt prune`, got {self.prune!r}"
            )
        if self.prune and self.nproc > 1:
            raise ConfigError("--prune relevance runs in one process; drop --nproc")
        tunable = set(RelevanceConfig.__dataclass_fields__) - {"target", "total_steps"}
        unknown = sorted(set(self.prune_options) - tunable)
        if unknown:
            raise ConfigError(
                f"unknown relevance pruning option(s) {unknown}; expected some of {sorted(tunable)}"
            )
        if self.prune_options and not self.prune:
            raise ConfigError("relevance pruning options need --prune relevance")
        if self.batch_size is not None and self.batch_size % self.nproc:
            raise ConfigError(
                f"batch_size={self.batch_size} must be divisible by nproc={self.nproc} (the "
                "global batch is split evenly across processes)"
            )
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_alpha must be a fraction in [0, 1], distill_temperature > 0")
        if self.distill and not self.fine_tuning:
            raise ConfigError(
                "--distill needs a teacher: --init-from CKPT with --compress, or --teacher"
            )
        features = self.distill_features
        if features is not None and not (features >= 0 and math.isfinite(features)):
            raise ConfigError(f"distill_features must be >= 0, got {features}")
        if (self.teacher or self.distill_features) and not self.distilling:
            raise ConfigError(
                "--teacher / --distill-features are distillation options: they need a "
                "distilled fine-tune (--init-from CKPT --compress ...)"
            )
        if self.calib_samples < 0:
            raise ConfigError(f"calib_samples must be >= 0, got {self.calib_samples}")

    @property
    def fine_tuning(self) -> bool:
        """A trained model compressed and fine-tuned (the `kompakt compress` recipe), or a
        model compressed elsewhere (`kompakt optimize`) fine-tuned against its --teacher."""
        return bool(self.init_from and (self.compress or self.teacher))

    @property
    def warmup(self) -> float:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(0.3, float(self.epochs)) if self.fine_tuning else 0.0

    @property
    def distilling(self) -> bool:
        return self.fine_tuning if self.distill is None else bool(self.distill)

    @property
    def feature_weight(self) -> float:
        """Weight of the feature term: 1.0 by default when distilling (on mnist5k at 171x it
        took 3 fine-tune epochs from 97.33 to 98.00 %, benchmarks/compress_trained.py)."""
        if not self.distilling:
            return 0.0
        return 1.0 if self.distill_features is None else self.distill_features


def parse_compress(text: str) -> object:
    """'tt:ranks=8' -> TTConfig(ranks=8): see `kompakt.models.parse_compression`."""
    return parse_compression(text)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel zero padding) and horizontal flip, from `gen` only."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def _loss(task: str, logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(logits.reshape(-1), y)
    return F.cross_entropy(logits, y, label_smoothing=smoothing)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.9,
    temperature: float = 4.0,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE.

    T^2 keeps the soft term's gradients on the scale of the hard one (Hinton et al., 2015).
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * t * t * soft + (1 - alpha) * F.cross_entropy(student, labels)


def _out_size(module: nn.Module) -> int | None:
    return getattr(module, "out_features", None) or getattr(module, "out_channels", None)


class FeatureMatching:
    """The feature term of distillation: the outputs of the student's compressed layers against
    the teacher's layers of the same names (the dense originals), each as a relative squared
    error sum((s - t)^2) / sum(t^2), averaged over the layers. Hooks record both while the
    ordinary forward passes run; `loss()` reads them."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        teacher_modules = dict(teacher.named_modules())
        self.names = [
            name
            for name, module in student.named_modules()
            if isinstance(module, CompressedLayer)
            and name in teacher_modules
            and _out_size(module) == _out_size(teacher_modules[name])  # not a pruned layer
        ]
        if not self.names:
            raise ConfigError(
                "--distill-features: no compressed layer of the student has a namesake in the "
                "teacher to match"
            )
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self.handles = [
            model.get_submodule(name).register_forward_hook(self._keep(role, name))
            for role, model in (("student", student), ("teacher", teacher))
            for name in self.names
        ]

    @classmethod
    def between(cls, student: nn.Module, teacher: nn.Module, required: bool):
        """A FeatureMatching, or None when there is nothing to match and it was not asked for."""
        try:
            return cls(student, teacher)
        except ConfigError:
            if required:
                raise
            return None

    def _keep(self, role: str, name: str) -> Callable:
        def hook(module, inputs, output):
            self.outputs[(role, name)] = output

        return hook

    def loss(self) -> torch.Tensor:
        terms = []
        for name in self.names:
            s, t = self.outputs[("student", name)], self.outputs[("teacher", name)].detach()
            if s.shape != t.shape:
                raise ConfigError(
                    f"--distill-features: layer {name} gives {tuple(s.shape)} in the student but "
                    f"{tuple(t.shape)} in the teacher; pass --distill-features 0"
                )
            terms.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
        self.outputs.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, batch: int = 256
) -> dict:
    """Loss and accuracy (classification) or RMSE (regression) on one split."""
    was_training = model.training
    model.eval()
    total, correct, squared = 0.0, 0, 0.0
    for start in range(0, len(x), batch):
        out = model(x[start : start + batch])
        target = y[start : start + batch]
        total += _loss(task, out, target, 0.0).item() * len(target)
        if task == "regression":
            squared += ((out.reshape(-1) - target) ** 2).sum().item()
        else:
            correct += (out.argmax(1) == target).sum().item()
    model.train(was_training)
    n = max(len(x), 1)
    metrics = {"loss": total / n}
    if task == "regression":
        metrics["rmse"] = math.sqrt(squared / n)
    else:
        metrics["accuracy"] = correct / n
    return metrics


def _score(metrics: dict) -> float:
    """Higher is better: accuracy, or -RMSE for regression."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["rmse"]


def load_weights_(model: nn.Module, path: str) -> None:
    """Load a user's weights into `model`: a state_dict (also under a "state_dict" or "model"
    key, or with DDP's "module." prefix) or a whole saved nn.Module (unpickled: only files you
    name yourself).

    Raises:
        CheckpointError: a missing or unreadable file, or weights that do not fit the model.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"--weights {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:  # a whole pickled module: code from a file the user named, like --model
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            first = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise CheckpointError(f"--weights {path} cannot be read: {first}") from None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"--weights {path} holds no state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"--weights {path} do not fit the model: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]} (was it saved from this --model with these --model-arg?)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = next((ln.strip() for ln in str(error).splitlines() if "size mismatch" in ln), "")
        raise CheckpointError(f"--weights {path} do not fit the model: {detail}") from None


def _build(config: TrainConfig, data: DataSplits) -> tuple[nn.Module, dict, str | None]:
    info = data.info
    report = None
    if config.init_from:
        ckpt = load_checkpoint(config.init_from)
        model = model_from_checkpoint(ckpt).train()
        spec = dict(ckpt["model"])
        kwargs = spec.get("kwargs", {})
        if kwargs.get("num_classes") not in (None, info.num_classes):
            raise ConfigError(
                f"--init-from model has {kwargs['num_classes']} outputs but {info.name} has "
                f"{info.num_classes} classes"
            )
    else:
        c, h, _ = info.input_shape
        kwargs = {
            "num_classes": info.num_classes,
            "in_channels": c,
            "image_size": h,
            **config.model_kwargs,
        }
        model = build_model(config.model, **kwargs)
        spec = {"name": canonical_source(config.model), "kwargs": kwargs}
        if config.weights:
            load_weights_(model, config.weights)
    if config.compress:
        calib = None
        if config.calib_samples:
            x_train, _ = data.split("train")
            calib = x_train[: config.calib_samples]
        compression_config = parse_compress(config.compress)
        # an --init-from model compressed before is compressed again from its own weights
        remade = densify_(model, compression_config) if config.init_from else []
        compression = compress_(model, compression_config, calib=calib)
        left = sorted(set(remade) - {row["name"] for row in compression.layers})
        if left:
            reasons = {r["name"]: r["reason"] for r in compression.skipped}
            raise ConfigError(
                f"--compress {config.compress} would leave {left[0]} (compressed in "
                f"{config.init_from}) dense: {reasons.get(left[0], 'not selected')}; "
                "choose lower ranks / a higher ratio"
            )
        if not compression.layers:
            reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in compression.skipped)
            raise ConfigError(
                f"--compress {config.compress} replaced no layer of {spec['name']} ("
                + (reasons or f"no Linear/Conv2d with >= {MIN_PARAMS:,} weights")
                + "); training it would be the uncompressed model under another name"
            )
        report = str(compression)
    spec["layers"] = layer_specs(model)
    return model, spec, report


# SGD's default learning rate per task: regression targets in their own units (house prices)
# give large gradients: 0.05 diverges on boston, and so does 0.002 for a searched 3-node cell;
# 0.001 trains both (mlp RMSE ~5, searched cell 4.7 in 10 epochs)
DEFAULT_SGD_LR = {"classification": 0.05, "regression": 0.001}
# a compressed trained model starts near a good solution: a smaller peak (after the warm-up)
FINE_TUNE_LR = 0.02


def _optimizer(config: TrainConfig, model: nn.Module, task: str) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        default = FINE_TUNE_LR if config.fine_tuning else DEFAULT_SGD_LR.get(task, 0.05)
        if not config.fine_tuning and config.batch_size < 64:
            # smaller batches, noisier steps: garipov-tt at batch 14 diverged at 0.05 and
            # reached 96.5 % at 0.023 in one epoch; lenet5 / digits 3 epochs: 89 % at 0.024
            default *= math.sqrt(config.batch_size / 64)
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr or default,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=config.lr or 1e-3, weight_decay=config.weight_decay
        )
    raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at global step `step`, as a fraction of --lr: a linear warm-up over
    `warmup` epochs, then the schedule (cosine to 0 over the remaining steps, x0.1 every third
    of the epochs, or constant). Stepped every batch, so a short fine-tune still decays."""
    total = max(1, config.epochs * steps_per_epoch)
    warm = min(total - 1, round(config.warmup * steps_per_epoch))
    every = max(1, config.epochs // 3)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if config.schedule == "step":
            return 0.1 ** ((step // steps_per_epoch) // every)
        return 1.0

    return factor


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))


class TrainHook:
    """Something the training loop calls at fixed points (pruning, logging, tests, a user's
    schedule). Override what you need; every method does nothing by default."""

    def before_step(self, step: int) -> None:
        """Before the forward pass of global step `step` (0-based, counted over this run)."""

    def after_step(self, step: int, loss: float) -> None:
        """After the optimiser step, with the batch's loss."""

    def after_epoch(self, epoch: int, metrics: dict) -> dict:
        """After validation of `epoch` (1-based); returns the metrics to record (may add)."""
        return metrics


class _RelevanceHook(TrainHook):
    """Relevance pruning (Novikov & Buryak) in the loop: random exclusion before each step,
    the relevance update and the removal test after it."""

    def __init__(self, pruner: RelevancePruner) -> None:
        self.pruner = pruner

    def before_step(self, step: int) -> None:
        self.pruner.before_step()

    def after_step(self, step: int, loss: float) -> None:
        self.pruner.after_step(loss)

    def after_epoch(self, epoch: int, metrics: dict) -> dict:
        return {**metrics, "filter_sparsity": self.pruner.sparsity()}


def fit(config: TrainConfig, hooks: Sequence[TrainHook] = ()) -> dict:
    """Train per `config`; writes last.pt, best.pt and metrics.jsonl under `config.out`.

    Args:
        config: what to train and how.
        hooks: TrainHooks called by the loop (in order), after kompakt's own.

    Returns:
        a summary: paths, epochs run, best and final validation metrics, test metrics.
    """
    if config.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if hooks:
            raise ConfigError("hooks run in one process; use nproc=1 with hooks")
        return _spawn(config)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    return _fit(config, rank, world, list(hooks))


def initialise(config: TrainConfig) -> dict:
    """Build the model as `fit` would (init-from, compression, output-aware init) and save it
    as best.pt and last.pt without training: `kompakt compress --finetune-epochs 0`."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.data, root=config.data_root)
    info = data.info
    torch.manual_seed(config.seed)
    model, spec, report = _build(config, data)
    if report and not config.quiet:
        print(report, file=sys.stderr)
    val = evaluate(model, *data.split("val"), info.task)
    # the name as given, options included (synthetic:channels=3,...): later steps reload it
    data_dict = {**info.to_dict(), "name": config.data, "root": config.data_root}
    ckpt = make_checkpoint(model, spec, data_dict, {"val": val, "epoch": 0})
    save_checkpoint(ckpt, out / "best.pt")
    save_checkpoint(ckpt, out / "last.pt")
    return {
        "out": str(out),
        "last": str(out / "last.pt"),
        "best": str(out / "best.pt"),
        "epochs": 0,
        "params": sum(p.numel() for p in model.parameters()),
        "val": val,
        "test": evaluate(model, *data.split("test"), info.task),
        "test_from": "best.pt",
        "report": report,
    }


# options that define the run: resuming with other values would silently mix two runs
RESUME_KEYS = (
    "model",
    "data",
    "data_root",
    "model_kwargs",
    "compress",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "augment",
    "batch_size",
    "seed",
    "prune",
    "prune_target",
    "prune_options",
    "warmup_epochs",
    "distill",
    "distill_alpha",
    "distill_temperature",
    "distill_features",
    "calib_samples",
    "teacher",
)


def default_batch(config: TrainConfig, n_train: int) -> int:
    """64, or the largest batch (>= 8, a multiple of nproc) that gives the run MIN_STEPS
    optimizer steps: lenet5 on digits (1,257 training images) for 3 epochs at 64 makes 60
    steps and tests at 25.6 %; at 16 (237 steps) 95.6 %. mnist5k runs of >= 5 epochs keep 64."""
    if config.fine_tuning:  # starts near a solution: its recipe was measured at 64
        return 64
    batch = min(64, max(8, n_train * config.epochs // MIN_STEPS))
    return max(config.nproc, batch - batch % config.nproc)


def _batches(n_train: int, batch: int, world: int) -> int:
    """Batches per epoch; a last partial batch too small to split over the processes, or of one
    sample (BatchNorm cannot train on it), is left out of that epoch."""
    return n_train // batch + (1 if n_train % batch >= max(2, world) else 0)


def _warn_if_short(config: TrainConfig, n_train: int) -> None:
    per_epoch = _batches(n_train, config.batch_size, config.nproc)  # as the loop counts them
    steps = per_epoch * config.epochs
    if steps < MIN_STEPS and not config.fine_tuning:
        warnings.warn(
            f"this run makes only {steps} optimizer steps ({config.epochs} epoch(s) of "
            f"{per_epoch} batches of {config.batch_size}); models "
            f"rarely learn in fewer than {MIN_STEPS}: raise --epochs (or lower --batch-size)",
            UserWarning,
            stacklevel=3,
        )


def _check_resume(config: TrainConfig, saved: dict, path: Path) -> None:
    """Refuse to resume with options other than the checkpoint's (epochs may change)."""
    now = _jsonable(asdict(config))
    differences = [
        f"{key}: {saved[key]!r} -> {now[key]!r}"
        for key in RESUME_KEYS
        if key in saved and saved[key] != now[key]
    ]
    if differences and not config.resume_override:
        raise ConfigError(
            f"--resume from {path} with other options than it was trained with ("
            + "; ".join(differences)
            + "); drop them, or pass --resume-override to apply them knowingly"
        )


def _fit(config: TrainConfig, rank: int, world: int, hooks: list[TrainHook]) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.data, root=config.data_root)
    info = data.info
    x_train, y_train = data.split("train")
    augment = config.augment
    if augment is None:
        augment = info.input_shape[0] == 3 and info.input_shape[1] >= 32

    last_path = out / "last.pt"
    start_epoch, best = 0, -math.inf
    resume_state = None
    if config.resume and last_path.is_file():
        resume_state = load_checkpoint(last_path)
        model = model_from_checkpoint(resume_state)
        spec, report = resume_state["model"], None
    else:
        torch.manual_seed(config.seed)
        model, spec, report = _build(config, data)
    if report and rank == 0 and not config.quiet:
        print(report, file=sys.stderr)
    if config.batch_size is None:  # a resumed run keeps its own; else sized to the data
        saved = (resume_state or {}).get("train", {}).get("config", {}).get("batch_size")
        config = replace(config, batch_size=saved or default_batch(config, len(x_train)))
    if rank == 0:
        _warn_if_short(config, len(x_train))
    model.train()
    optimizer = _optimizer(config, model, info.task)
    steps_per_epoch = _batches(len(x_train), config.batch_size, world)
    scheduler = _scheduler(config, optimizer, steps_per_epoch)
    teacher = _teacher(config, info.task)
    features = None
    if teacher is not None and config.feature_weight:
        # asked for: no layer to match is an error; by default: no feature term then
        features = FeatureMatching.between(model, teacher, config.distill_features is not None)
    if resume_state is not None:
        state = resume_state["train"]
        _check_resume(config, state.get("config", {}), last_path)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state["best"]
        previous_epochs = state.get("config", {}).get("epochs", config.epochs)
        if previous_epochs == config.epochs:
            scheduler.load_state_dict(state["scheduler"])  # the same run: bit-identical resume
        else:
            # More (or fewer) epochs: the schedule is re-planned for the new total and
            # fast-forwarded to the resume point, so an extended run never trains at LR 0.
            for group in optimizer.param_groups:  # the chainable schedulers start from lr
                group["lr"] = group.get("initial_lr", group["lr"])
            scheduler = _scheduler(config, optimizer, steps_per_epoch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # stepping without optimizer.step() is intended
                for _ in range(start_epoch * steps_per_epoch):
                    scheduler.step()
        if start_epoch >= config.epochs:
            raise ConfigError(
                f"{last_path} already trained {start_epoch} epochs; pass --epochs larger than "
                f"{start_epoch} to train more"
            )

    pruner = None
    if config.prune == "relevance":
        steps = _batches(len(x_train), config.batch_size, world) * (config.epochs - start_epoch)
        every = max(10, steps // 40)  # about 30 removal tests over the run
        settings = {"every": every, "warmup": every * 3, **config.prune_options}
        relevance = RelevanceConfig(target=config.prune_target, total_steps=steps, **settings)
        pruner = RelevancePruner(model, relevance, example=x_train[:1], seed=config.seed)
        hooks = [_RelevanceHook(pruner), *hooks]

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)

    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        _truncate_metrics(metrics_path, start_epoch)
    steps_done = 0
    params = sum(p.numel() for p in model.parameters())
    show = rank == 0 and not config.quiet
    # the name as given, options included (synthetic:channels=3,...): later steps reload it
    data_dict = {**info.to_dict(), "name": config.data, "root": config.data_root}
    last_val: dict = {}
    best_loss = math.inf
    for epoch in range(start_epoch, config.epochs):
        start = time.perf_counter()
        epoch_seed = config.seed * 100_003 + epoch
        gen = torch.Generator().manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed + 1 + rank)  # dropout
        order = torch.randperm(len(x_train), generator=gen)
        steps = _batches(len(order), config.batch_size, world)
        running, seen = 0.0, 0
        bar = progress(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", quiet=not show)
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if augment:
                xb = _augment(xb, gen)
            xb, yb = xb[rank::world], yb[rank::world]
            for hook in hooks:
                hook.before_step(steps_done)
            logits = net(xb)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(xb)
                loss = distillation_loss(
                    logits, soft, yb, config.distill_alpha, config.distill_temperature
                )
                if features is not None:
                    loss = loss + config.feature_weight * features.loss()
            else:
                loss = _loss(info.task, logits, yb, config.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"{_kept(last_path)}. Lower --lr (now "
                    f"{optimizer.param_groups[0]['lr']:.3g}) or check the data for NaNs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the last step's rate is what the log shows
            scheduler.step()
            for hook in hooks:
                hook.after_step(steps_done, loss.item())
            running += loss.item() * len(yb)
            seen += len(yb)
            steps_done += 1
            if show:
                bar.set_postfix(loss=f"{running / seen:.4f}")
        if rank != 0:
            continue
        last_val = evaluate(model, *data.split("val"), info.task)
        if not all(math.isfinite(v) for v in last_val.values()):
            raise TrainingDivergedError(
                f"validation became non-finite at epoch {epoch + 1} ({last_val}); the epoch is "
                f"not saved; {_kept(last_path)}. Lower --lr"
            )
        epoch_loss = running / max(seen, 1)
        best_loss = min(best_loss, epoch_loss)
        if epoch_loss > 100 * best_loss and config.stop_on_divergence:
            raise TrainingDivergedError(
                f"epoch {epoch + 1}: train loss {epoch_loss:.4g} is over 100x the best so far "
                f"({best_loss:.4g}); stopped (--stop-on-divergence); {_kept(last_path)}"
            )
        if epoch_loss > 100 * best_loss:
            warnings.warn(
                f"epoch {epoch + 1}: train loss {epoch_loss:.4g} is over 100x the best so far "
                f"({best_loss:.4g}): the run is diverging; lower --lr",
                stacklevel=2,
            )
        for hook in hooks:
            last_val = hook.after_epoch(epoch + 1, last_val)
        row = {
            "epoch": epoch + 1,
            "train_loss": running / max(seen, 1),
            **{f"val_{k}": v for k, v in last_val.items()},
            "lr": lr,
            "time_s": round(time.perf_counter() - start, 3),
            "params": params,
        }
        improved = _score(last_val) > best
        best = max(best, _score(last_val))
        train_state = {
            "config": _jsonable(asdict(config)),
            "epoch": epoch + 1,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best,
        }
        ckpt = make_checkpoint(
            model, spec, data_dict, {"val": last_val, "epoch": epoch + 1}, train_state
        )
        if improved and pruner is None:  # a pruning run's best.pt is its final compact model
            save_checkpoint(ckpt, out / "best.pt")
        save_checkpoint(ckpt, last_path)
        with open(metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if not config.quiet:
            remaining = (config.epochs - epoch - 1) * row["time_s"]
            row_shown = {**row, "eta_s": round(remaining, 1)}
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row_shown.items()
            )
            print(shown, file=sys.stderr)
    if features is not None:
        features.remove()
    if rank != 0:
        return {}
    if pruner is not None:
        last_val = _finish_pruning(pruner, model, spec, data, data_dict, out, config)
        params = sum(p.numel() for p in model.parameters())
    if not last_val and last_path.is_file():
        last_val = load_checkpoint(last_path)["metrics"].get("val", {})
    # the test numbers describe best.pt, the checkpoint users export
    test_from = out / "best.pt" if (out / "best.pt").is_file() else last_path
    if test_from.is_file():
        model = model_from_checkpoint(load_checkpoint(test_from))
    test = evaluate(model, *data.split("test"), info.task)
    return {
        "out": str(out),
        "last": str(last_path),
        "best": str(out / "best.pt"),
        "epochs": config.epochs,
        "params": params,
        "val": last_val,
        "test": test,
        "test_from": test_from.name,
    }


def _teacher(config: TrainConfig, task: str) -> nn.Module | None:
    """The --teacher (default --init-from) model as saved, in eval mode and frozen: the
    distillation teacher."""
    if not config.distilling:
        return None
    if task != "classification":
        raise ConfigError("distillation needs a classification task; pass --no-distill")
    teacher = model_from_checkpoint(load_checkpoint(config.teacher or config.init_from)).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def _kept(last_path: Path) -> str:
    """What a stopped run leaves, in words that name a file that exists."""
    if last_path.is_file():
        return f"{last_path} keeps the last good epoch"
    return "no checkpoint was written (the first epoch did not finish)"


def _finish_pruning(pruner, model, spec, data, data_dict, out, config) -> dict:
    """Remove the pruned filters for real and save the compact model as last.pt and best.pt."""
    groups = pruner.finish()
    sparsity = pruner.sparsity()
    pruner.masker.remove()
    spec["resized"] = compact_(model, groups)
    val = evaluate(model, *data.split("val"), data.info.task)
    val["filter_sparsity"] = sparsity
    train_state = {"config": _jsonable(asdict(config)), "epoch": config.epochs, "pruned": True}
    ckpt = make_checkpoint(
        model, spec, data_dict, {"val": val, "epoch": config.epochs}, train_state
    )
    save_checkpoint(ckpt, out / "best.pt")
    save_checkpoint(ckpt, out / "last.pt")
    return val


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))


def _truncate_metrics(path: Path, keep_epochs: int) -> None:
    """Drop metric lines of epochs that will be re-run (after a resume)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= keep_epochs]
    path.write_text("".join(line + "\n" for line in kept))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, config: TrainConfig, world: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _fit(config, rank, world, [])
        if rank == 0:
            Path(result_path).write_text(json.dumps(result))
        # both ranks past every collective before either tears gloo down: a rank that left
        # first closed the connection under the other's last op (a rare SIGABRT in rank 1)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(config: TrainConfig) -> dict:
    """Run `config.nproc` local processes with DistributedDataParallel (gloo on CPU)."""
    import torch.multiprocessing as mp

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / ".ddp_result.json"
    mp.spawn(
        _worker,
        args=(config, config.nproc, _free_port(), str(result_path)),
        nprocs=config.nproc,
        join=True,
    )
    result = json.loads(result_path.read_text())
    result_path.unlink()
    return result
