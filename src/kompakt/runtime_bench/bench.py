"""`kompakt bench`: several bundles measured side by side; results JSON is the source of truth.

Latency comes from a fresh worker process per (round, batch, bundle), visited A B A B ... so
machine drift hits every bundle equally; each worker also reports its peak RSS. Accuracy and
parity vs the PyTorch checkpoint are measured in this process through the same engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from kompakt import __version__, measure
from kompakt.errors import ConfigError, KompaktError
from kompakt.machine import describe_machine
from kompakt.options import opt
from kompakt.progress import progress
from kompakt.runtime import golden, load
from kompakt.runtime.backends import plugin_modules
from kompakt.runtime.manifest import check_schema, read_manifest
from kompakt.runtime_bench.loadgen import SCENARIOS
from kompakt.runtime_bench.metrics import METRICS, BundleResult, measure_all, measured

CV_WARNING = 0.10


def parse_batches(text: str | tuple | list) -> tuple[int, ...]:
    """'1,8,32' (or a list) -> (1, 8, 32)."""
    items = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        batches = tuple(int(b) for b in items if b != "")
    except (TypeError, ValueError):
        raise ConfigError(f"batches must be whole numbers like 1,8,32, got {text!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"batches must be whole numbers >= 1, got {text!r}")
    return batches


def parse_cpus(text: str | None) -> list[int] | None:
    """'0,1' -> [0, 1], checked against the CPUs this process may use."""
    if text is None or text == "":
        return None
    try:
        cpus = sorted({int(c) for c in str(text).split(",") if c.strip()})
    except ValueError:
        raise ConfigError(f"--cpus takes CPU numbers like 0,1, got {text!r}") from None
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None and not set(cpus) <= set(allowed):
        raise ConfigError(f"--cpus {text}: this process may only use CPUs {allowed}")
    return cpus


def machine_load(loops: int = 60) -> dict:
    """How loaded the machine is right now: the 1-minute load average against the cores, and
    the coefficient of variation of a fixed compute loop (a quiet machine repeats it within a
    few percent). Measured before timing, recorded with the results."""
    a = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)
    times = []
    for _ in range(loops):
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    times_arr = np.asarray(times[loops // 6 :])  # the first calls warm caches
    cores = os.cpu_count() or 1
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "load_average_1min": None if load1 is None else round(load1, 2),
        "cores": cores,
        "calibration_cv": round(float(times_arr.std() / times_arr.mean()), 3),
    }


def load_warning(load: dict) -> str | None:
    busy = load["load_average_1min"] is not None and load["load_average_1min"] > 0.5 * load["cores"]
    if not busy and load["calibration_cv"] <= CV_WARNING:
        return None
    return (
        f"the machine is loaded (load average {load['load_average_1min']} on {load['cores']} "
        f"cores, calibration loop CV {load['calibration_cv']:.0%}): latencies will be noisy; "
        "measure on an idle machine or pin with --cpus"
    )


@dataclass(frozen=True)
class BenchConfig:
    """The options of `kompakt bench`; field names are the CLI option and TOML key names."""

    batches: tuple[int, ...] | str = opt(
        (1, 8, 32), "Batch sizes, e.g. 1,8,32.", parse=parse_batches
    )
    warmup_s: float = opt(1.0, "Warm-up seconds per worker before timing.")
    min_runs: int = opt(50, "Timed runs per batch at least (split over the rounds).")
    duration_s: float = opt(3.0, "Timed seconds per batch (split over the rounds).")
    threads: int | None = opt(None, "Intra-op threads of every engine.")
    inter_op_threads: int | None = opt(
        None, "Inter-op threads (ONNX Runtime's parallel executor); default: sequential."
    )
    spin: bool = opt(False, "Let ONNX Runtime's thread pools spin (faster, burns idle cores).")
    cpus: str | None = opt(None, "CPUs to pin every worker process to, e.g. 0,1 (Linux).")
    scenario: Literal["single-stream", "multi-stream", "offline", "server"] | None = opt(
        None,
        "An MLPerf LoadGen scenario instead of the default timing (needs kompakt[bench]); "
        "--duration-s and --min-runs become LoadGen's minimum duration and query count.",
    )
    target_latency_ms: float = opt(10.0, "Server scenario: the p99 latency bound (ms).")
    target_qps: float | None = opt(
        None, "Server scenario: the QPS the search starts from (default: from a short timing)."
    )
    search_steps: int = opt(6, "Server scenario: LoadGen runs per bundle in the QPS search.")
    loadgen_settings: str | None = opt(
        None, "LoadGen user.conf applied as is, after kompakt's settings (experts)."
    )
    data: str | None = opt(None, "Dataset for accuracy through the engine.")
    split: str = opt("test", "Split of --data.")
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    ckpt: str | None = opt(None, "Checkpoint for PyTorch-vs-engine parity.")
    rounds: int = opt(2, "Interleaved rounds (A B A B ...).")
    report: str | None = opt(
        None, "Directory for results.json, report.md, CSV and PNGs.", aliases=("-o", "--out")
    )
    quiet: bool = opt(False, "No progress bar.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", parse_batches(self.batches))
        parse_cpus(self.cpus)
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ConfigError(f"scenario must be one of {sorted(SCENARIOS)}, got {self.scenario!r}")
        if self.target_latency_ms <= 0 or self.search_steps < 1:
            raise ConfigError("target_latency_ms must be > 0 and search_steps >= 1")
        if self.rounds < 1 or self.min_runs < 1:
            raise ConfigError("rounds and min_runs must be >= 1")
        if self.warmup_s < 0 or self.duration_s <= 0:
            raise ConfigError("warmup_s must be >= 0 and duration_s > 0")


def run_config(
    bundles: list[str | Path], config: BenchConfig, checkpoints: dict[str, str] | None = None
) -> dict:
    """`run` with a BenchConfig; `checkpoints` maps a bundle directory's name to the PyTorch
    checkpoint it came from (parity per bundle, e.g. in a pipeline), else config.ckpt for all."""
    options = dataclasses.asdict(config)
    return run(bundles, **options, checkpoints=checkpoints)


def results_schema() -> dict:
    text = resources.files("kompakt.runtime_bench").joinpath("results.schema.json").read_text()
    return json.loads(text)


def latency_stats(times_s: list[float], batch: int) -> dict:
    """Mean, std, percentiles (ms), throughput and coefficient of variation of timed runs."""
    ms = np.asarray(times_s) * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "runs": len(ms),
        "mean_ms": mean,
        "std_ms": std,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "throughput_per_s": batch * 1e3 / mean,
        "cv": std / mean if mean else 0.0,
    }


def _worker(
    bundle: Path,
    batch: int,
    warmup_s: float,
    min_runs: int,
    duration_s: float,
    placement: dict,
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "kompakt.runtime_bench.worker",
        str(bundle),
        "--batches",
        str(batch),
        "--warmup-s",
        str(warmup_s),
        "--min-runs",
        str(min_runs),
        "--duration-s",
        str(duration_s),
    ]
    cmd += placement_args(placement)
    for module in plugin_modules():  # backends registered outside kompakt
        cmd += ["--plugin", module]
    return run_fresh(cmd, f"benchmark worker failed on {bundle} at batch {batch}")


def run_fresh(cmd: list[str], failure: str) -> dict:
    """Run a measurement in a fresh Python process (our import path) and read its JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KompaktError(f"{failure}: {last}")
    return json.loads(proc.stdout)


def merge_gpu(kept: dict | None, new: dict) -> dict:
    """One bundle's GPU figures over its worker runs: the largest memory, every timing."""
    if kept is None:
        return {
            **new,
            "timing": {**new["timing"], "device_only_s": dict(new["timing"]["device_only_s"])},
        }
    for key in (
        "context_device_memory_bytes",
        "io_buffers_bytes",
        "device_used_delta_bytes",
    ):
        values = [v for v in (kept.get(key), new.get(key)) if v is not None]
        kept[key] = max(values) if values else None
    for batch, times in new["timing"]["device_only_s"].items():
        kept["timing"]["device_only_s"].setdefault(batch, []).extend(times)
    return kept


def gpu_summary(gpu: dict | None, measured: bool = False) -> dict | None:
    """The GPU record of a bundle with device-only latency statistics instead of raw times.
    `measured` (`measured_on_gpu`) is True only when this machine has a real CUDA GPU (the CUDA
    runtime names one that is not the test fake), so a figure from a stand-in can never pass
    for a measurement."""
    if gpu is None:
        return None
    timing = dict(gpu["timing"])
    raw = timing.pop("device_only_s")
    timing["device_only"] = {b: latency_stats(t, int(b)) for b, t in raw.items() if t}
    return {**gpu, "timing": timing, "measured_on_gpu": measured}


def _loadgen_all(paths, names, run, rounds, steps, raw, report, placement, quiet):
    """Every bundle through one LoadGen scenario, interleaved: bundle A's run, B's, A's...
    (the server search takes one step per bundle in turn). Logs under report/loadgen/."""
    import tempfile

    from kompakt.runtime import load
    from kompakt.runtime_bench import loadgen

    scratch = Path(tempfile.mkdtemp(prefix="kompakt-loadgen-"))
    logs = Path(report) / "loadgen" if report else scratch / "logs"
    inputs = []
    for i, path in enumerate(paths):  # samples through each bundle's own preprocessing
        with load(path) as engine:
            if raw is not None:
                x = _inputs(engine, raw[:256])
            else:
                shape = [d if isinstance(d, int) else 1 for d in engine.inputs[0].shape]
                rng = np.random.default_rng(0)
                x = rng.standard_normal([256, *shape[1:]]).astype(np.float32)
        inputs.append(scratch / f"samples-{i}.npy")
        np.save(inputs[-1], np.ascontiguousarray(x, np.float32))

    def one(i: int, settings, tag: str) -> dict:
        cmd = [
            sys.executable,
            "-m",
            "kompakt.runtime_bench.loadgen",
            str(paths[i]),
            "--run",
            json.dumps(dataclasses.asdict(settings)),
            "--samples",
            str(inputs[i]),
            "--out",
            str(logs / names[i] / tag),
        ]
        cmd += placement_args(placement)
        return run_fresh(cmd, f"LoadGen {settings.scenario} run failed on {paths[i]}")

    out: dict[int, dict] = {}
    try:
        if run.scenario != "server":
            runs: dict[int, list[dict]] = {i: [] for i in range(len(paths))}
            for r in progress(range(rounds), desc=f"loadgen {run.scenario}", quiet=quiet):
                for i in range(len(paths)):
                    runs[i].append(one(i, run, f"round{r + 1}"))
            for i, rows in runs.items():
                values = [row["value"] for row in rows if row["value"] is not None]
                best = dict(rows[-1])
                best["value"] = float(np.median(values)) if values else None
                out[i] = {
                    **best,
                    "runs": rows,
                    "logs": None if not report else str(logs / names[i]),
                }
            return out
        searches = [loadgen.ServerSearch(run.target_qps, steps) for _ in paths]
        for step in progress(range(steps), desc="loadgen server search", quiet=quiet):
            for i, search in enumerate(searches):
                settings = dataclasses.replace(run, target_qps=search.next)
                search.record(one(i, settings, f"trial{step + 1}"))
        for i, search in enumerate(searches):
            best = search.best()
            summary = dict(best or search.trials[0])
            summary.update(
                value=best["target_qps"] if best else None,
                p99_ms=best["p99_ms"] if best else None,
                trials=search.trials,
                logs=None if not report else str(logs / names[i]),
            )
            out[i] = summary
        return out
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def placement_args(placement: dict) -> list[str]:
    """Worker arguments for threads, inter-op threads, spinning and CPU pinning."""
    args = []
    if placement.get("threads"):
        args += ["--threads", str(placement["threads"])]
    if placement.get("inter_op_threads"):
        args += ["--inter-op-threads", str(placement["inter_op_threads"])]
    if placement.get("spin"):
        args.append("--spin")
    if placement.get("cpus"):
        args += ["--cpus", ",".join(str(c) for c in placement["cpus"])]
    return args


def _dataset(name: str, split: str, root: str | None):
    from kompakt.data import load_dataset

    data = load_dataset(name, root=root)
    if split not in data.raw:
        raise ConfigError(f"split {split!r} does not exist; valid splits: {', '.join(data.raw)}")
    return data.raw[split], data.y[split].numpy(), data.info


def _inputs(engine, raw: np.ndarray) -> np.ndarray:
    """The dataset's raw images through this bundle's preprocessing (what predict computes)."""
    return dataclasses.replace(engine.preprocessing, layout="CHW").normalize(raw)


def _run_all(engine, x: np.ndarray) -> np.ndarray:
    """Outputs for every row of x, in chunks the engine accepts."""
    return measure.run_batches(engine.run, x, min(64, engine.max_batch or 64))


def _accuracy(engine, x: np.ndarray, y: np.ndarray, task: str) -> dict:
    return measure.accuracy_report(_run_all(engine, x), y, task)


def _parity(engine, ckpt: str, x: np.ndarray) -> dict:
    return measure.pytorch_parity(ckpt, engine.run, x, min(64, engine.max_batch or 64))


def _bundle_bytes(bundle: Path, manifest: dict) -> tuple[int, int]:
    """(bytes the engine loads: the artefact and its side files, bytes of the whole bundle)."""
    files = manifest["files"]
    names = manifest.get("artifact_files") or [manifest["artifact"]]
    artefact = sum(files[n]["bytes"] for n in names if n in files)
    return artefact, sum(f["bytes"] for f in files.values())


def run(
    bundles: list[str | Path],
    batches: tuple[int, ...] = (1, 8, 32),
    warmup_s: float = 1.0,
    min_runs: int = 50,
    duration_s: float = 3.0,
    threads: int | None = None,
    data: str | None = None,
    split: str = "test",
    data_root: str | None = None,
    ckpt: str | None = None,
    rounds: int = 2,
    report: str | Path | None = None,
    quiet: bool = False,
    checkpoints: dict[str, str] | None = None,
    inter_op_threads: int | None = None,
    spin: bool = False,
    cpus: str | None = None,
    scenario: str | None = None,
    target_latency_ms: float = 10.0,
    target_qps: float | None = None,
    search_steps: int = 6,
    loadgen_settings: str | None = None,
) -> dict:
    """Measure bundles side by side and return the results (also written under `report`)."""
    if not bundles:
        raise ConfigError("kompakt bench needs at least one bundle directory")
    if rounds < 1 or min_runs < 1 or any(b < 1 for b in batches):
        raise ConfigError("rounds, min_runs and every batch must be >= 1")
    paths = [Path(b) for b in bundles]
    manifests = [read_manifest(p) for p in paths]  # verifies every hash before measuring
    goldens = [_verify(p, threads) for p in paths]  # the numbers are right here, or we say so
    names = _unique_names(paths)
    placement = {
        "threads": threads,
        "inter_op_threads": inter_op_threads,
        "spin": spin,
        "cpus": parse_cpus(cpus),
    }
    load_before = machine_load()
    noisy = load_warning(load_before)
    if noisy:
        warnings.warn(noisy, stacklevel=2)
    samples: dict[tuple[int, int], list[float]] = {}
    per_bundle: list[dict] = [
        {"create_s": [], "first_s": [], "peak": [], "baseline": []} for _ in paths
    ]
    x_eval = y_eval = info = None
    if data:
        x_eval, y_eval, info = _dataset(data, split, data_root)
    scenarios: dict[int, dict] = {}
    jobs = [(r, b, i) for r in range(rounds) for b in batches for i in range(len(paths))]
    if scenario:  # LoadGen drives the engines instead of the timing loop below
        from kompakt.runtime_bench import loadgen

        loadgen.require_loadgen()
        run = loadgen.RunSettings(
            scenario, duration_s, min_runs, target_latency_ms, target_qps, loadgen_settings
        )
        scenarios = _loadgen_all(
            paths, names, run, rounds, search_steps, x_eval, report, placement, quiet
        )
        jobs = []
    bar = progress(jobs, desc="bench", quiet=quiet)
    for _, batch, i in bar:
        max_batch = manifests[i].get("max_batch")
        if max_batch is not None and batch > max_batch:
            continue
        result = _worker(
            paths[i],
            batch,
            warmup_s if _ == 0 else warmup_s / 2,
            max(1, min_runs // rounds),
            duration_s / rounds,
            placement,
        )
        samples.setdefault((i, batch), []).extend(result["times"][str(batch)])
        record = per_bundle[i]
        record["create_s"].append(result["create_s"])
        record["first_s"].append(result["first_inference_s"])
        record["peak"].append(result["peak_rss_kib"] or 0)
        record["baseline"].append(result["baseline_rss_kib"] or 0)
        if result.get("gpu"):
            record["gpu"] = merge_gpu(record.get("gpu"), result["gpu"])

    machine = describe_machine(("onnxruntime", "openvino", "tensorrt"))
    results = []
    for i, (path, manifest) in enumerate(zip(paths, manifests, strict=True)):
        artefact_bytes, total_bytes = _bundle_bytes(path, manifest)
        record = per_bundle[i]
        latency = {str(b): latency_stats(samples[(i, b)], b) for b in batches if (i, b) in samples}
        entry = BundleResult(
            name=names[i],
            path=str(path),
            backend=manifest["backend"],
            precision=manifest["precision"],
            artefact_bytes=artefact_bytes,
            bundle_bytes=total_bytes,
            latency=latency,
            create_s=float(np.mean(record["create_s"])) if record["create_s"] else None,
            first_inference_s=float(np.mean(record["first_s"])) if record["first_s"] else None,
            peak_rss_mib=max(record["peak"]) / 1024 if record["peak"] else None,
            baseline_rss_mib=min(record["baseline"]) / 1024 if record["baseline"] else None,
        )
        entry.golden = goldens[i]
        entry.gpu = gpu_summary(record.get("gpu"), measured=bool(machine["gpu"]))
        entry.scenario = scenarios.get(i)
        if entry.golden and not entry.golden["ok"]:
            entry.warnings.append(f"golden samples drifted: {golden.describe(entry.golden)}")
        max_batch = manifest.get("max_batch")
        for batch in batches:
            if max_batch is not None and batch > max_batch:
                entry.warnings.append(
                    f"batch {batch} not measured: above this bundle's max batch {max_batch} "
                    "(rebuild with a larger --max-batch)"
                )
        if entry.peak_rss_mib is not None:
            entry.rss_delta_mib = entry.peak_rss_mib - entry.baseline_rss_mib
        for batch, stats in latency.items():
            if stats["cv"] > CV_WARNING:
                entry.warnings.append(
                    f"batch {batch}: coefficient of variation {stats['cv']:.0%} > "
                    f"{CV_WARNING:.0%} (noisy machine?)"
                )
        source = (checkpoints or {}).get(path.name, ckpt)
        if x_eval is not None or source:
            with load(path, threads=threads) as engine:
                x = _inputs(engine, x_eval) if x_eval is not None else None
                if x is not None:
                    measured = _accuracy(engine, x, y_eval, info.task)
                    entry.accuracy = {"dataset": data, "split": split, **measured}
                if source:
                    x = x[:256] if x is not None else _random_input(engine)
                    entry.parity = {**_parity(engine, source, x), "checkpoint": str(source)}
        entry.metrics = measure_all(entry)
        results.append(entry.to_dict())
    _add_ratios(results)
    out = {
        "schema": "kompakt-bench/1",
        "kompakt_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "batches": list(batches),
            "warmup_s": warmup_s,
            "min_runs": min_runs,
            "duration_s": duration_s,
            "threads": threads,
            "rounds": rounds,
            "order": "interleaved per round and batch (A B A B ...)",
            "ort_spinning": spin,
            "inter_op_threads": inter_op_threads,
            "cpus": placement["cpus"],
            "machine_load": load_before,
            "data": data,
            "split": split,
        },
        "machine": machine,
        "gpu_note": None if machine["gpu"] else "GPU: not measured (no GPU)",
        "bundles": results,
    }
    check_schema(out, results_schema(), "bench results")
    for entry in results:
        for message in entry["warnings"]:
            warnings.warn(f"{entry['name']}: {message}", stacklevel=2)
    if report:
        from kompakt.runtime_bench.report import write_report

        write_report(out, Path(report))
    return out


def _verify(path: Path, threads: int | None) -> dict | None:
    """The bundle's golden-sample check on this machine (None for bundles without them)."""
    with load(path, threads=threads) as engine:
        if not engine.manifest.get("golden"):
            return None
        return engine.verify()


def _random_input(engine) -> np.ndarray:
    shape = [d if isinstance(d, int) else 8 for d in engine.inputs[0].shape]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _add_ratios(results: list[dict]) -> None:
    """Each bundle vs the first (the baseline), per batch's p50 and per metric: > 1 means better
    (faster, smaller, leaner, more accurate)."""
    base = results[0]
    for entry in results:
        ratios: dict[str, float] = {}
        for batch, stats in entry["latency"].items():
            if batch in base["latency"]:
                speedup = measure.ratio(base["latency"][batch]["p50_ms"], stats["p50_ms"])
                if speedup is not None:
                    ratios[f"p50_speedup_b{batch}"] = speedup
        for metric in measured(results):
            was, now = base["metrics"].get(metric.name), entry["metrics"].get(metric.name)
            if was is not None and now is not None:
                ratio = metric.ratio(was, now)
                if ratio is not None:
                    ratios[metric.name] = ratio
        entry["vs_baseline"] = {k: round(v, 3) for k, v in ratios.items()}


def compare(old: dict, new: dict, threshold: float = 0.10, accuracy_points: float = 0.5) -> list:
    """Regressions of `new` vs `old` (bundles matched by name): p50 latency slower by more than
    `threshold` at any batch, and every metric that got worse by more than its table threshold
    (`threshold` for relative metrics, `accuracy_points` for top-1)."""
    for label, results in (("old", old), ("new", new)):
        if not isinstance(results, dict) or not isinstance(results.get("bundles"), list):
            raise ConfigError(f"the {label} results are not kompakt bench results (no bundles)")
    regressions = []
    for entry, _, batch, was, now, cv in _matched_latencies(old, new):
        limit = max(threshold, 2 * cv)  # a change inside the runs' own spread is noise
        if now > was * (1 + limit):
            regressions.append(
                f"{entry['name']} batch {batch}: p50 {was:.3f} -> "
                f"{now:.3f} ms (+{now / was - 1:.0%}, beyond the {limit:.0%} allowed)"
            )
    for entry, ref in _matched_bundles(old, new):
        was_metrics = ref.get("metrics") or _legacy_metrics(ref)
        now_metrics = entry.get("metrics") or _legacy_metrics(entry)
        for name in METRICS.names():
            metric = METRICS.get(name)
            was, now = was_metrics.get(name), now_metrics.get(name)
            if metric.regression is None or was is None or now is None:
                continue
            limit = metric.regression
            if name == "top1":
                limit = accuracy_points
            elif not metric.absolute and metric.regression == 0.10:
                limit = threshold
            if metric.worse_by(was, now) > limit:
                unit = f" {metric.unit}" if metric.unit else ""
                regressions.append(
                    f"{entry['name']}: {metric.label} {metric.format(was)} -> "
                    f"{metric.format(now)}{unit} (worse than the {limit:g} limit)"
                )
    return regressions


def _matched_bundles(old: dict, new: dict):
    """(new entry, old entry) for every bundle name in both results."""
    before = {b["name"]: b for b in old["bundles"]}
    for entry in new["bundles"]:
        if entry["name"] in before:
            yield entry, before[entry["name"]]


def _matched_latencies(old: dict, new: dict):
    """(entry, ref, batch, old p50, new p50, the larger CV of the two) per shared batch."""
    for entry, ref in _matched_bundles(old, new):
        for batch, stats in entry["latency"].items():
            if batch in ref["latency"]:
                cv = max(ref["latency"][batch].get("cv", 0), stats.get("cv", 0))
                yield entry, ref, batch, ref["latency"][batch]["p50_ms"], stats["p50_ms"], cv


def compare_table(old: dict, new: dict) -> list[dict]:
    """Every latency and metric of the bundles in both results: old -> new and the change."""
    rows = [
        {
            "bundle": entry["name"],
            "what": f"p50 b{batch} ms",
            "old": was,
            "new": now,
            "change": now / was - 1 if was else None,
            "noise_cv": cv,
        }
        for entry, _, batch, was, now, cv in _matched_latencies(old, new)
    ]
    for entry, ref in _matched_bundles(old, new):
        was_m = ref.get("metrics") or _legacy_metrics(ref)
        now_m = entry.get("metrics") or _legacy_metrics(entry)
        for name in METRICS.names():
            if was_m.get(name) is not None and now_m.get(name) is not None:
                metric = METRICS.get(name)
                was, now = was_m[name] * metric.scale, now_m[name] * metric.scale
                rows.append(
                    {
                        "bundle": entry["name"],
                        "what": f"{metric.label} {metric.unit}".strip(),
                        "old": was,
                        "new": now,
                        "change": now / was - 1 if was else None,
                        "noise_cv": None,
                    }
                )
    return rows


def _legacy_metrics(entry: dict) -> dict:
    """Metrics of a results file written before the metrics table existed."""
    return measure_all(BundleResult.from_dict(entry))
