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


def burst_medians(
    calls: dict[str, Callable[[], object]], rounds: int, burst: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per run of each callable, timed in bursts: per round, each callable runs
    `warmup` untimed then `burst` timed runs back to back (A A A B B B A A A ...). A burst
    keeps the callable's weights in the caches as an app's loop does (and as `kompakt bench`'s
    worker loops do); one run each, round-robin, would time every model from cold caches
    (measured: 1.8x the bench's p50 for a 40 MB FC layer at batch 1). Rounds still spread
    machine drift over all of them."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            for _ in range(burst):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}
