"""Timing several callables side by side, so machine drift hits all of them equally."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    calls: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per run of each callable, timed round-robin (A B C A B C ...) after a warm-up."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(
    calls: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, float]:
    """Median seconds per run of each callable (see `interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(calls, runs, warmup).items()}


def save_results(path: str, benchmark: str, settings: dict, **sections: object) -> dict:
    """Write a benchmark's results JSON (with the date and the machine) atomically."""
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    from kompakt.machine import describe_machine

    result = {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "machine": describe_machine(("torch", "onnx", "onnxruntime", "openvino")),
        **sections,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return result
