"""Accuracy and parity, computed one way for export checks, bundles and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np


def class_scores(logits: np.ndarray) -> np.ndarray:
    """(N, classes) scores; fully convolutional maps (N, classes, H, W) are averaged."""
    return logits.reshape(len(logits), logits.shape[1], -1).mean(-1)


def accuracy(logits: np.ndarray, labels: np.ndarray, task: str = "classification") -> dict:
    """{"top1": fraction} for classification, {"rmse": value} for regression."""
    if task == "regression":
        return {"rmse": float(np.sqrt(np.mean((logits.reshape(-1) - labels) ** 2)))}
    return {"top1": float((class_scores(logits).argmax(1) == labels).mean())}


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
