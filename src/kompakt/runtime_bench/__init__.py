"""Measurement of bundles: latency, throughput, memory, size, accuracy, parity; reports.

Kept import-light: `python -m kompakt.runtime_bench.worker` runs in a fresh process that must
not pay for torch or matplotlib.
"""


def run(*args, **kwargs):
    """Benchmark bundles side by side; see `kompakt.runtime_bench.bench.run`."""
    from kompakt.runtime_bench.bench import run as run_bench

    return run_bench(*args, **kwargs)
