"""The options of `kompakt optimize`: one frozen dataclass, which is also its CLI and TOML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kompakt.errors import ConfigError
from kompakt.options import opt
from kompakt.runtime_bench.bench import parse_batches


def _floats(text: str | tuple | list | None) -> tuple[float, ...] | None:
    if text is None or isinstance(text, tuple | list):
        return tuple(float(v) for v in text) if text is not None else None
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected numbers separated by commas, got {text!r}") from None


def _names(text: str | tuple | list | None) -> tuple[str, ...] | None:
    if text is None or isinstance(text, tuple | list):
        return tuple(text) if text is not None else None
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


@dataclass(frozen=True)
class OptimizeConfig:
    """The options of `kompakt optimize`; field names are the CLI option and TOML key names."""

    backend: str = opt("onnxruntime", "The target engine the result is deployed to and measured.")
    batches: tuple[int, ...] | str = opt(
        (1, 32),
        "Batches the latency objective counts (each alike), e.g. 1,32.",
        parse=parse_batches,
    )
    objective: Literal["latency", "size"] = opt(
        "latency",
        "latency: the fastest under --max-size-kib; size: the smallest under --max-latency-ms.",
    )
    max_size_kib: float | None = opt(None, "Largest engine file (KiB) the choice may have.")
    max_latency_ms: float | None = opt(
        None, "Slowest p50 (ms) at the first of --batches the choice may have."
    )
    max_accuracy_drop: float = opt(
        0.5, "Top-1 points the result may lose against the dense model (measured, after fine-tune)."
    )
    finetune_epochs: int = opt(3, "Distilled fine-tune epochs of the chosen model.")
    precisions: tuple[str, ...] | str = opt(
        ("fp32", "int8"), "Engine precisions searched, e.g. fp32,int8.", parse=_names
    )
    methods: tuple[str, ...] | str | None = opt(
        None, "Compressions searched (default: every registered one), e.g. tt,prune.", parse=_names
    )
    prune_ratios: tuple[float, ...] | str | None = opt(
        None,
        "Filter fractions the channel methods try (default: each method's, 0.25,0.5).",
        parse=_floats,
    )
    error_budget: float = opt(
        0.4,
        "Accuracy proxy budget of the first round: the relative error of the model's outputs "
        "before fine-tune; a round whose measured drop is too large rescales it by the "
        "overshoot (garipov-conv-fc on mnist5k: 0.35 lost 0.53 points after 3 epochs).",
    )
    rounds: int = opt(3, "Build-and-measure rounds at most (each tightens the budget).")
    trials: int = opt(400, "Search trials when the space is too large to try everything.")
    calib_samples: int = opt(512, "Training samples for fitting, BatchNorm and INT8 calibration.")
    threads: int | None = opt(2, "Intra-op threads, for the cost tables and the final bench.")
    data: str | None = opt(None, "Dataset (default: the one the checkpoint was trained on).")
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    out: str = opt("runs/optimized", "Output directory.", aliases=("-o",))
    seed: int = opt(0, "Seed.")
    quiet: bool = opt(False, "No progress output.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", parse_batches(self.batches))
        for name, parse in (("precisions", _names), ("methods", _names)):
            object.__setattr__(self, name, parse(getattr(self, name)))
        object.__setattr__(self, "prune_ratios", _floats(self.prune_ratios))
        if self.objective not in ("latency", "size"):
            raise ConfigError(f"objective must be 'latency' or 'size', got {self.objective!r}")
        if self.objective == "size" and self.max_latency_ms is None:
            raise ConfigError("--objective size needs --max-latency-ms (what it may not exceed)")
        bad = [p for p in self.precisions if p not in ("fp32", "int8")]
        if bad or not self.precisions:
            raise ConfigError(f"precisions are fp32 and/or int8, got {self.precisions}")
        if self.max_accuracy_drop < 0 or self.error_budget <= 0:
            raise ConfigError("max_accuracy_drop must be >= 0 and error_budget > 0")
        if self.rounds < 1 or self.trials < 1 or self.calib_samples < 16:
            raise ConfigError("rounds and trials must be >= 1, calib_samples >= 16")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        for ratio in self.prune_ratios or ():
            if not 0 < ratio < 1:
                raise ConfigError(f"prune ratios are fractions in (0, 1), got {ratio}")
