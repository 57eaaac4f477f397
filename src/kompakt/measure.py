"""The one measuring module: running an engine over many rows in chunks, accuracy, parity with a
reference (PyTorch or another engine), and ratios against a baseline. Export checks, deploy,
bench, the pipeline and optimize all measure with these functions, so a number means the same
everywhere. numpy only at import (the runtime uses it; torch is imported only by
`pytorch_outputs`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def class_scores(logits: np.ndarray) -> np.ndarray:
    """(N, classes) scores; fully convolutional maps (N, classes, H, W) are averaged."""
    return logits.reshape(len(logits), logits.shape[1], -1).mean(-1)


def run_batches(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, fixed: bool = False
) -> np.ndarray:
    """Outputs for every row of x in chunks of `batch`; a fixed-batch model gets exactly `batch`
    rows each time (the last chunk is padded with repeats and trimmed)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        if fixed and len(chunk) < batch:
            pad = np.concatenate([chunk] * (batch // len(chunk) + 1))[:batch]
            outs.append(run(pad)[: len(chunk)])
        else:
            outs.append(run(chunk))
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray, task: str = "classification") -> dict:
    """{"top1": fraction} for classification, {"rmse": value} for regression."""
    if task == "regression":
        return {"rmse": float(np.sqrt(np.mean((logits.reshape(-1) - labels) ** 2)))}
    return {"top1": float((class_scores(logits).argmax(1) == labels).mean())}


def accuracy_report(logits: np.ndarray, labels: np.ndarray, task: str) -> dict:
    """`accuracy` plus the sample count, and top-5 when there are more than 10 classes."""
    out = {**accuracy(logits, labels, task), "samples": len(labels)}
    if task == "regression":
        return out
    scores = class_scores(logits)
    if scores.shape[1] > 10:
        top5 = np.argsort(-scores, axis=1)[:, :5]
        out["top5"] = float((top5 == labels[:, None]).any(1).mean())
    return out


def parity(reference: np.ndarray, got: np.ndarray) -> dict:
    """How far `got` is from `reference`: max abs / relative error and top-1 agreement."""
    reference = np.asarray(reference, np.float64)
    got = np.asarray(got, np.float64)
    if reference.shape != got.shape:
        raise ValueError(f"parity needs equal shapes, got {reference.shape} and {got.shape}")
    diff = np.abs(reference - got)
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
    agree = 1.0
    if reference.ndim > 1 and reference.shape[1] > 1:
        agree = float((class_scores(reference).argmax(1) == class_scores(got).argmax(1)).mean())
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float(diff.max(initial=0.0) / scale),
        "top1_agreement": agree,
        "samples": len(reference),
    }


def pytorch_outputs(ckpt: str | object, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The outputs of a kompakt checkpoint (path or loaded dict) on x, in eval mode: the
    reference that PyTorch-vs-engine parity compares against."""
    import torch

    from kompakt.models.checkpoint import load_checkpoint, model_from_checkpoint

    saved = load_checkpoint(ckpt) if not isinstance(ckpt, dict) else ckpt
    model = model_from_checkpoint(saved).eval()
    with torch.no_grad():
        return run_batches(lambda b: model(torch.from_numpy(b)).numpy(), x, batch)


def pytorch_parity(
    ckpt: str | object, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 64
) -> dict:
    """`parity` of an engine's `run` against the checkpoint's PyTorch outputs on x."""
    return parity(pytorch_outputs(ckpt, x), run_batches(run, x, batch))


def ratio(base: float | None, value: float | None, better: str = "lower") -> float | None:
    """How many times better `value` is than `base` (> 1 = better): base / value when lower is
    better (latency, size), value / base when higher is (throughput); None when either is
    missing or zero."""
    if not base or not value:
        return None
    return base / value if better == "lower" else value / base


def speedups(base_p50_ms: dict, p50_ms: dict) -> dict:
    """{batch: base p50 / p50} for the batches both were measured at."""
    return {b: ratio(base_p50_ms[b], v) for b, v in p50_ms.items() if b in base_p50_ms}
