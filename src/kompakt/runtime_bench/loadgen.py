"""MLPerf LoadGen scenarios for `kompakt bench --scenario ...`.

LoadGen (`mlcommons-loadgen`, the `kompakt[bench]` extra) issues the queries; the bundle's
`Engine` answers them as LoadGen's system under test, in a fresh process per run like the rest
of bench (`python -m kompakt.runtime_bench.loadgen`, numpy + the runtime only). Scenarios:

- single-stream: one sample per query, the next issued when it returns; metric p90 latency.
- multi-stream: 8 samples per query (one batch); metric p99 per-query latency.
- offline: every sample at once, answered in batches; metric samples per second.
- server: Poisson arrivals at a target QPS; the SUT batches what is waiting (up to 8); the
  metric is the highest QPS whose p99 latency stays under the bound, found by a search of
  LoadGen runs (`server_search`).

LoadGen's own minimums (600 s per run) make results comparable across submissions; kompakt
lowers them to `duration_s` / `min_queries` so a run takes seconds, and reports LoadGen's
verdict as it is: a short run can miss LoadGen's early-stopping criterion and be INVALID while
its latency bound is met. `settings_file` (LoadGen's user.conf) is applied last, as is.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kompakt.machine import package_version

SCENARIOS = {
    "single-stream": "SingleStream",
    "multi-stream": "MultiStream",
    "offline": "Offline",
    "server": "Server",
}
MULTI_STREAM_SAMPLES = 8
SERVER_MAX_BATCH = 8
OFFLINE_BATCH = 32


@dataclass(frozen=True)
class RunSettings:
    """One LoadGen run: the scenario, kompakt's lowered minimums, the server target."""

    scenario: str
    duration_s: float = 10.0
    min_queries: int = 100
    target_latency_ms: float = 10.0
    target_qps: float | None = None
    settings_file: str | None = None


def require_loadgen():
    """The LoadGen module, or one line saying how to install it."""
    from kompakt.runtime.backends.base import require

    return require("mlperf_loadgen", "bench", "kompakt bench --scenario (MLPerf LoadGen)")


class EngineSUT:
    """LoadGen's system under test over an Engine: issue_queries only enqueues, worker
    threads take what is waiting (up to `max_batch` samples), run it as one batch and report
    each sample complete, so LoadGen's issuing thread is never blocked by inference."""

    def __init__(self, lg, engine, samples: np.ndarray, max_batch: int, workers: int = 1):
        self.lg, self.engine, self.samples, self.max_batch = lg, engine, samples, max_batch
        self.pending: queue.Queue = queue.Queue()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def issue_queries(self, query_samples) -> None:
        for sample in query_samples:
            self.pending.put(sample)

    def flush_queries(self) -> None:
        """Nothing is held back: every sample is run as soon as a worker is free."""

    def _work(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.pending.put(None)
                    break
                batch.append(item)
            try:
                self.engine.run(self.samples[[s.index for s in batch]])
            except BaseException as error:  # reported after the run; LoadGen must not hang
                self.errors.append(error)
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in batch])

    def stop(self) -> None:
        for _ in self.threads:
            self.pending.put(None)
        for thread in self.threads:
            thread.join()


def _estimate(engine, samples: np.ndarray, batch: int, seconds: float = 0.5) -> float:
    """Seconds per call at `batch` (a short timing so LoadGen's expectations fit the engine)."""
    x = samples[np.arange(batch) % len(samples)]
    engine.run(x)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        engine.run(x)
        runs += 1
    return (time.perf_counter() - start) / runs


def _test_settings(lg, run: RunSettings, engine, samples: np.ndarray, batch: int):
    """LoadGen's settings; `batch` is what the SUT runs per call (the estimates time it)."""
    name = SCENARIOS[run.scenario]
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, name)
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(run.duration_s * 1000)
    settings.max_duration_ms = int(run.duration_s * 4000) + 10_000
    settings.min_query_count = run.min_queries
    if run.scenario == "single-stream":
        settings.single_stream_expected_latency_ns = int(_estimate(engine, samples, 1) * 1e9)
    elif run.scenario == "multi-stream":
        settings.multi_stream_samples_per_query = MULTI_STREAM_SAMPLES
        calls = math.ceil(MULTI_STREAM_SAMPLES / batch)  # a query of 8 in batches the engine takes
        per_query = calls * _estimate(engine, samples, batch)
        settings.multi_stream_expected_latency_ns = int(per_query * 1e9)
    elif run.scenario == "offline":
        settings.offline_expected_qps = batch / _estimate(engine, samples, batch)
    else:
        settings.server_target_qps = run.target_qps or 0.5 / _estimate(engine, samples, 1)
        settings.server_target_latency_ns = int(run.target_latency_ms * 1e6)
        settings.server_target_latency_percentile = 0.99
    if run.settings_file:  # an expert's user.conf wins over kompakt's defaults
        settings.FromConfig(run.settings_file, "kompakt", name)
    return settings


def read_detail(folder: Path) -> dict:
    """LoadGen's result_* / early_stopping_* entries from mlperf_log_detail.txt."""
    values = {}
    for line in (folder / "mlperf_log_detail.txt").read_text().splitlines():
        if ":::MLLOG" not in line:
            continue
        record = json.loads(line.split(":::MLLOG", 1)[1])
        key = record.get("key", "")
        if key.startswith(("result_", "early_stopping_")):
            values[key] = record.get("value")
    return values


def summarise(scenario: str, detail: dict, settings: dict) -> dict:
    """Our schema for one LoadGen run: the scenario's metric, LoadGen's verdict, latencies."""

    def ms(key: str) -> float | None:
        value = detail.get(key)
        return None if value is None else value / 1e6

    per_query = "per_query_" if scenario == "multi-stream" else ""
    row = {
        "scenario": scenario,
        "valid": detail.get("result_validity") == "VALID",
        "validity": detail.get("result_validity"),
        "invalid_reason": detail.get("result_invalid_reason") or None,
        "latency_bound_met": detail.get("result_perf_constraints_met"),
        "early_stopping_met": detail.get("early_stopping_met"),
        "queries": detail.get("result_query_count"),
        "p50_ms": ms(f"result_50.00_percentile_{per_query}latency_ns"),
        "p90_ms": ms(f"result_90.00_percentile_{per_query}latency_ns"),
        "p99_ms": ms(f"result_99.00_percentile_{per_query}latency_ns"),
        "samples_per_s": detail.get("result_samples_per_second")
        or detail.get("result_completed_samples_per_sec")
        or detail.get("result_qps_without_loadgen_overhead"),
        "target_qps": settings.get("target_qps"),
        "loadgen_version": package_version("mlcommons-loadgen"),
        "settings": settings,
    }
    metric = {
        "single-stream": ("p90_latency_ms", row["p90_ms"], "lower"),
        "multi-stream": ("p99_query_latency_ms", row["p99_ms"], "lower"),
        "offline": ("samples_per_s", row["samples_per_s"], "higher"),
        "server": ("qps", settings.get("target_qps"), "higher"),
    }[scenario]
    row.update(metric=metric[0], value=metric[1], better=metric[2])
    return row


def run_one(
    bundle: str,
    run: RunSettings,
    samples: np.ndarray,
    outdir: Path,
    threads: int | None = None,
    tuning: dict | None = None,
) -> dict:
    """One LoadGen run against a bundle, in this process; its logs stay in `outdir`."""
    from kompakt.runtime import load

    lg = require_loadgen()
    outdir.mkdir(parents=True, exist_ok=True)
    with load(bundle, threads=threads, tuning=tuning) as engine:
        wanted = {
            "single-stream": 1,
            "multi-stream": MULTI_STREAM_SAMPLES,
            "offline": OFFLINE_BATCH,
            "server": SERVER_MAX_BATCH,
        }[run.scenario]
        batch = min(wanted, engine.max_batch or wanted)
        settings = _test_settings(lg, run, engine, samples, batch)
        sut_impl = EngineSUT(lg, engine, samples, batch)
        sut = lg.ConstructSUT(sut_impl.issue_queries, sut_impl.flush_queries)
        qsl = lg.ConstructQSL(len(samples), len(samples), lambda _: None, lambda _: None)
        log = lg.LogSettings()
        log.log_output.outdir = str(outdir)
        log.log_output.copy_summary_to_stdout = False
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log)
        finally:
            sut_impl.stop()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        if sut_impl.errors:
            raise sut_impl.errors[0]
    used = {**asdict(run)}
    if run.scenario == "server":
        used["target_qps"] = settings.server_target_qps
    return summarise(run.scenario, read_detail(outdir), used)


class ServerSearch:
    """The highest QPS whose p99 latency meets the bound: double from a start until a run
    misses, then bisect, `steps` LoadGen runs in all. Runs of several bundles interleave
    (one step each in turn), like the rest of bench."""

    def __init__(self, start_qps: float, steps: int = 6) -> None:
        self.low, self.high = 0.0, math.inf
        self.next = start_qps
        self.steps = steps
        self.trials: list[dict] = []

    def done(self) -> bool:
        return len(self.trials) >= self.steps

    def record(self, result: dict) -> None:
        self.trials.append(result)
        qps = result["target_qps"]
        if result["latency_bound_met"]:
            self.low = max(self.low, qps)
        else:
            self.high = min(self.high, qps)
        self.next = self.low * 2 if math.isinf(self.high) else (self.low + self.high) / 2
        if self.next <= 0:
            self.next = qps / 4

    def best(self) -> dict | None:
        met = [t for t in self.trials if t["latency_bound_met"]]
        return max(met, key=lambda t: t["target_qps"]) if met else None


def main(argv: list[str] | None = None) -> int:
    """Worker entry: run one LoadGen run and print its summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--run", required=True, help="RunSettings as JSON")
    parser.add_argument("--samples", required=True, help=".npy file of preprocessed inputs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inter-op-threads", type=int, default=None)
    parser.add_argument("--spin", action="store_true", default=None)
    parser.add_argument("--cpus", default=None)
    args = parser.parse_args(argv)
    from kompakt.runtime_bench.worker import place

    cpus = place([int(c) for c in args.cpus.split(",")] if args.cpus else None)
    run = RunSettings(**json.loads(args.run))
    tuning = {"spin": args.spin, "inter_op_threads": args.inter_op_threads}
    samples = np.load(args.samples)
    result = run_one(args.bundle, run, samples, Path(args.out), args.threads, tuning)
    result["cpus"] = cpus
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
