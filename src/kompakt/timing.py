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
