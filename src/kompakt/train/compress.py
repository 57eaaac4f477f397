"""`kompakt compress`: a trained checkpoint -> a compressed one that keeps its accuracy.

The recipe, each step measured in benchmarks/compress_trained.py: compress every selected layer
(TT-SVD, or MetaHead's block diagonal), fit the compressed layers in order to the dense layers'
outputs on real activations (`--calib-samples`; each on what the layers compressed before it
feed it), re-estimate BatchNorm, then fine-tune briefly with the original model as the teacher
(distillation of the logits plus the compressed layers' outputs) under a warm-up + cosine
schedule. `--steps N` gets there gradually (TT ranks halving towards the target, each step
re-compressing the previous one and fine-tuning its share of the epochs). The result is a normal
checkpoint directory (best.pt, last.pt, metrics.jsonl) that exports, deploys and resumes like
any other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kompakt.compression import COMPRESSIONS
from kompakt.errors import ConfigError
from kompakt.models.checkpoint import load_checkpoint
from kompakt.options import opt
from kompakt.train.trainer import TrainConfig, TrainHook, fit, initialise


@dataclass(frozen=True)
class CompressConfig:
    """The options of `kompakt compress`; field names are the CLI option names."""

    method: str = opt(
        "tt",
        "A registered layer compression: tt (TT-SVD of large layers), meta (MetaHead), or a "
        "plugin's (kompakt list compressions).",
    )
    method_args: str | None = opt(
        None, "The method's options as key=value,... (e.g. rank=4 for a plugin's method)."
    )
    ratio: float | None = opt(
        None,
        "tt: times fewer parameters in the compressed layers; ranks are spread over the Linear "
        "layers by error reduction per parameter (convs keep --ranks).",
    )
    scope: Literal["layers", "model"] = opt(
        "layers", "tt --ratio counts the compressed layers, or the whole model (model)."
    )
    ranks: int | None = opt(None, "TT rank cap (default 8 unless --eps).")
    eps: float | None = opt(None, "TT-SVD relative error bound per layer (instead of --ranks).")
    groups: int = opt(4, "meta: groups of the MetaHead.")
    calib_samples: int = opt(
        512, "Training samples whose activations the compressed layers are fitted to (0: off)."
    )
    finetune_epochs: int = opt(3, "Fine-tune epochs after compression (0: keep the init).")
    steps: int = opt(
        1,
        "Gradual compression: reach the target in this many steps (tt ranks halving towards "
        "--ranks, or a ratio growing to --ratio), each with its share of the fine-tune epochs.",
    )
    distill: bool = opt(True, "Fine-tune against the original model's outputs (teacher).")
    teacher: str | None = opt(
        None, "Distillation teacher checkpoint (default: CKPT; a TT checkpoint's dense origin)."
    )
    distill_alpha: float = opt(0.9, "Weight of the distillation term (a fraction).")
    distill_temperature: float = opt(4.0, "Softmax temperature of distillation.")
    distill_features: float | None = opt(
        None,
        "Weight of matching the compressed layers' outputs to the original's (default 1.0, "
        "0: off).",
    )
    lr: float | None = opt(None, "Peak learning rate (default 0.02, after a 0.3-epoch warm-up).")
    batch_size: int = opt(64, "Batch size.")
    data: str | None = opt(None, "Dataset (default: the one the checkpoint was trained on).")
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    out: str = opt("runs/compressed", "Output directory.", aliases=("-o",))
    resume: bool = opt(False, "Continue an interrupted compress run from OUT/last.pt.")
    seed: int = opt(0, "Seed.")
    quiet: bool = opt(False, "No progress output.")

    def __post_init__(self) -> None:
        method = COMPRESSIONS.get(self.method)  # an unknown name lists the valid ones
        if method.kind != "layer":
            raise ConfigError(
                f"--method {self.method} removes filters across the model: use kompakt prune "
                "or kompakt optimize"
            )
        if self.method_args and self.method in ("tt", "meta"):
            raise ConfigError(
                f"--method {self.method} takes its options as flags (--ranks, --ratio, "
                "--groups...), not --method-args"
            )
        if self.scope == "model" and self.ratio is None:
            raise ConfigError("--scope model needs --ratio (what the whole model shrinks by)")
        if self.finetune_epochs < 0 or self.calib_samples < 0:
            raise ConfigError("finetune_epochs and calib_samples must be >= 0")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.steps > 1:
            if self.method != "tt" or self.eps is not None:
                raise ConfigError("--steps needs --method tt with --ranks or --ratio (not --eps)")
            if self.finetune_epochs < self.steps:
                raise ConfigError(
                    f"--steps {self.steps} needs at least one fine-tune epoch per step "
                    f"(--finetune-epochs >= {self.steps}, got {self.finetune_epochs})"
                )

    def spec(self, step: int | None = None) -> str:
        """The --compress spelling of step `step` of `steps` (default: the last, the target):
        tt:ranks=8, tt:eps=0.3, meta:groups=4. Earlier steps of a gradual compression double
        the rank cap per step left, or take the ratio to the power step / steps."""
        step = step or self.steps
        if self.method not in ("tt", "meta"):
            return f"{self.method}:{self.method_args or ''}"
        if self.method == "meta":
            return f"meta:groups={self.groups}"
        if self.ratio is not None:
            scope = ",scope=model" if self.scope == "model" else ""
            ratio = round(self.ratio ** (step / self.steps), 4)
            return f"tt:ratio={ratio}{scope}" + (f",ranks={self.ranks}" if self.ranks else "")
        if self.eps is not None:
            return f"tt:eps={self.eps}"
        return f"tt:ranks={(self.ranks or 8) * 2 ** (self.steps - step)}"

    def step_epochs(self) -> list[int]:
        """Fine-tune epochs of each step: an equal share, the remainder to the last."""
        share, extra = divmod(self.finetune_epochs, self.steps)
        return [share] * (self.steps - 1) + [share + extra]


def compress_checkpoint(ckpt: str, config: CompressConfig, hooks: Sequence[TrainHook] = ()) -> dict:
    """Compress `ckpt` per `config`; returns fit's summary (paths, val and test metrics) of the
    last step. `hooks` go to the fine-tune loop (see TrainHook). With `steps` > 1 each earlier
    step is a checkpoint directory OUT/step<k> that the next step re-compresses; the original
    model (or `teacher`) stays the teacher throughout."""
    saved = load_checkpoint(ckpt)
    data = config.data or saved.get("data", {}).get("name")
    if not data:
        raise ConfigError(f"{ckpt} does not name its dataset; pass --data")
    distill = config.distill if config.finetune_epochs else None
    previous, result = str(ckpt), {}
    for step, epochs in enumerate(config.step_epochs(), 1):
        final = step == config.steps
        train = TrainConfig(
            model=saved["model"]["name"],
            data=data,
            data_root=config.data_root or saved.get("data", {}).get("root"),
            init_from=previous,
            teacher=(config.teacher or (str(ckpt) if step > 1 else None)) if distill else None,
            compress=config.spec(step),
            epochs=max(epochs, 1),
            calib_samples=config.calib_samples,
            distill=distill,
            distill_alpha=config.distill_alpha,
            distill_temperature=config.distill_temperature,
            distill_features=config.distill_features if distill else None,
            lr=config.lr,
            batch_size=config.batch_size,
            out=config.out if final else str(Path(config.out) / f"step{step}"),
            resume=config.resume,
            seed=config.seed,
            quiet=config.quiet,
        )
        done = None if final or not config.resume else _finished_step(train.out, epochs)
        if done:
            previous = done  # a resumed gradual run: this step finished before the kill
            continue
        result = initialise(train) if epochs == 0 else fit(train, hooks)
        previous = result["best"]
    return result


def _finished_step(out: str, epochs: int) -> str | None:
    """best.pt of a step directory whose run trained all its `epochs`, else None."""
    last = Path(out) / "last.pt"
    if not last.is_file():
        return None
    state = load_checkpoint(last).get("train") or {}
    return str(Path(out) / "best.pt") if state.get("epoch") == epochs else None
