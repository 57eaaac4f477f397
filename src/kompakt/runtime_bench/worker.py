"""One measured configuration in a fresh process: `python -m kompakt.runtime_bench.worker`.

Imports only kompakt.runtime (numpy + the bundle's backend, never torch), so the peak RSS it
reports is what an app embedding the engine would pay. Prints one JSON object on stdout:
baseline RSS (interpreter + backend imported), engine creation time, first-inference time, the
timed runs per batch after a warm-up, and the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_kib() -> int | None:
    peak = _status_kib("VmHWM")
    if peak is None:  # not Linux: getrusage reports the peak (KiB on Linux, bytes on macOS)
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = usage // 1024 if sys.platform == "darwin" else usage
    return peak


def _device_used(cuda, device: int) -> int | None:
    """Memory in use on `device` (cudaMemGetInfo reports the calling thread's current device,
    so it is set first; the count is the whole device's, other processes included)."""
    if int(cuda.cudaSetDevice(device)[0]):
        return None
    error, free, total = cuda.cudaMemGetInfo()
    return None if int(error) else int(total - free)


class GpuProbe:
    """Device memory and synchronised GPU timing, for runners that expose them (TensorRT):
    the engine's own activation memory, the I/O buffers held, the process's device-memory
    growth from before the engine was loaded (cudaMemGetInfo, sampled after every batch), and
    per batch the time of the engine alone (inputs already on the device, the stream
    synchronised) next to the end-to-end time that includes the host<->device copies.
    Made only for such runners, before the RSS baseline (it imports cuda-python)."""

    def __init__(self, device: int = 0) -> None:
        from kompakt.runtime.backends.tensorrt import cudart

        self.cuda, self.device = cudart(), device
        self.before = _device_used(self.cuda, device)
        self.peak = self.before
        self.device_only: dict[str, list[float]] = {}

    def sample(self) -> None:
        used = _device_used(self.cuda, self.device)
        if self.before is not None and used is not None:
            self.peak = max(self.peak, used)

    def time_device_only(self, runner, x, runs: int) -> None:
        runner.run_all(x)  # buffers sized for this batch, inputs on the device
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run_all(x, copies=False)  # returns after the stream is synchronised
            times.append(time.perf_counter() - t0)
        self.device_only[str(len(x))] = times

    def result(self, runner) -> dict:
        cuda = self.cuda
        props = cuda.cudaGetDeviceProperties(getattr(runner, "device", 0))[1]
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {
            "device": name.rstrip("\x00"),
            "driver_version": int(cuda.cudaDriverGetVersion()[1]),
            "runtime_version": int(cuda.cudaRuntimeGetVersion()[1]),
            "sdk_version": getattr(getattr(runner, "trt", None), "__version__", None),
            **runner.device_memory(),
            # cudaMemGetInfo counts the whole device: other processes' allocations too
            "device_used_delta_bytes": (
                None if self.before is None else int(self.peak - self.before)
            ),
            "timing": {
                "end_to_end_includes_host_device_copies": True,
                "synchronised": "the CUDA stream, after every call",
                "device_only_s": self.device_only,
            },
        }


def place(cpus: list[int] | None) -> list[int] | None:
    """Pin this process to `cpus` (Linux sched_setaffinity); returns the CPUs it runs on."""
    import os

    if cpus:
        os.sched_setaffinity(0, cpus)
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def measure(
    bundle: str,
    batches: list[int],
    warmup_s: float,
    min_runs: int,
    duration_s: float,
    threads: int | None,
    tuning: dict | None = None,
) -> dict:
    import numpy as np

    from kompakt.runtime import RUNNERS, load
    from kompakt.runtime.manifest import read_manifest

    manifest = read_manifest(bundle, verify=False)
    runner_type = RUNNERS.get(manifest["backend"])
    sdk = getattr(runner_type, "sdk", None)
    if sdk:  # imported before the baseline: the SDK is not the model's memory
        importlib.import_module(sdk)
    device = int((manifest.get("backend_options") or {}).get("device_id", 0) or 0)
    probe = GpuProbe(device) if hasattr(runner_type, "device_memory") else None
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    engine = load(bundle, threads=threads, tuning=tuning)
    create_s = time.perf_counter() - start
    shape = [d if isinstance(d, int) else 1 for d in engine.inputs[0].shape]
    rng = np.random.default_rng(0)
    first = rng.standard_normal([batches[0], *shape[1:]]).astype(np.float32)
    start = time.perf_counter()
    engine.run(first)
    first_s = time.perf_counter() - start
    results = {}
    for batch in batches:
        x = rng.standard_normal([batch, *shape[1:]]).astype(np.float32)
        deadline = time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:  # warm-up runs are never timed
            engine.run(x)
        times: list[float] = []
        begin = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - begin < duration_s:
            t0 = time.perf_counter()
            engine.run(x)
            times.append(time.perf_counter() - t0)
        results[str(batch)] = times
        if probe:
            probe.time_device_only(engine.runner, x, min_runs)
            probe.sample()
    gpu = probe.result(engine.runner) if probe else None
    engine.close()
    return {
        "baseline_rss_kib": baseline,
        "peak_rss_kib": _peak_kib(),
        "create_s": create_s,
        "first_inference_s": first_s,
        "times": results,
        "threads": threads,
        "gpu": gpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inter-op-threads", type=int, default=None)
    parser.add_argument("--spin", action="store_true", default=None)
    parser.add_argument("--cpus", default=None, help="CPUs to pin this process to, e.g. 0,1")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="a module to import first (it registers a runtime backend)",
    )
    args = parser.parse_args(argv)
    for module in args.plugin:
        importlib.import_module(module)
    batches = [int(b) for b in args.batches.split(",")]
    cpus = place([int(c) for c in args.cpus.split(",")] if args.cpus else None)
    tuning = {"spin": args.spin, "inter_op_threads": args.inter_op_threads}
    result = measure(
        args.bundle, batches, args.warmup_s, args.min_runs, args.duration_s, args.threads, tuning
    )
    result["cpus"] = cpus
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
