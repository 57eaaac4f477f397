"""Driver of scripts/gpu_smoke.sh: every step is a function that raises on failure; the run
prints one PASS/FAIL table and writes it as JSON. Nothing here fakes a result: on a machine
without a GPU the preflight fails and the other steps are reported as not run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

MATRIX = [
    ("tensorrt", "fp32"),
    ("tensorrt", "fp16"),
    ("tensorrt", "int8"),
    ("onnxruntime-tensorrt", "fp32"),
    ("onnxruntime-tensorrt", "fp16"),
    ("onnxruntime-tensorrt", "int8"),
    ("onnxruntime-cuda", "fp32"),
    ("onnxruntime-cuda", "fp16"),
]
LIMITS = {"fp32": 2e-3, "fp16": 2e-2}  # max relative error vs ORT CPU (TensorRT uses TF32)


def kompakt(*args: str) -> str:
    run = subprocess.run(["kompakt", *args], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"kompakt {' '.join(args)}: {run.stderr.strip().splitlines()[-1:]}")
    return run.stdout


def preflight() -> str:
    import importlib.metadata as metadata

    import onnxruntime as ort
    import tensorrt

    wheels = [w for w in ("onnxruntime", "onnxruntime-gpu") if _installed(metadata, w)]
    assert wheels == ["onnxruntime-gpu"], f"ONNX Runtime wheels installed: {wheels}"
    assert ort.get_device() == "GPU", f"ort.get_device() is {ort.get_device()}"
    providers = ort.get_available_providers()
    for needed in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        assert needed in providers, f"{needed} missing from {providers}"
    major = tensorrt.__version__.split(".")[0]
    assert major == "10", f"tensorrt {tensorrt.__version__}; ORT's TensorRT EP links 10.x"
    import pytest  # noqa: F401  (the last step runs it)

    return f"onnxruntime-gpu {ort.__version__}, TensorRT {tensorrt.__version__}"


def _installed(metadata, name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def prepare(out: Path) -> dict:
    kompakt(
        "train",
        "--model",
        "lenet5",
        "--data",
        "digits",
        "--epochs",
        "2",
        "-o",
        str(out / "run"),
        "--quiet",
    )
    kompakt("export", str(out / "run" / "best.pt"), "-o", str(out / "lenet.onnx"))
    kompakt("export", str(out / "run" / "best.pt"), "-o", str(out / "static.onnx"), "--batch", "4")
    kompakt("deploy", str(out / "lenet.onnx"), "-o", str(out / "cpu"), "--force")
    return {"onnx": out / "lenet.onnx", "static": out / "static.onnx", "cpu": out / "cpu"}


def deploy(out: Path, backend: str, precision: str) -> str:
    folder = out / f"{backend}-{precision}"
    kompakt(
        "deploy",
        str(out / "lenet.onnx"),
        "-o",
        str(folder),
        "--backend",
        backend,
        "--precision",
        precision,
        "--force",
    )
    manifest = json.loads((folder / "kompakt.json").read_text())
    placed = manifest["backend_info"].get("nodes_by_provider")
    return f"max_batch {manifest['max_batch']}, placement {placed}"


def parity(out: Path, backend: str, precision: str) -> str:
    from kompakt.runtime import load

    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    with load(out / "cpu") as cpu, load(out / f"{backend}-{precision}") as gpu:
        want, got = cpu.run(x), gpu.run(x)
    if precision == "int8":
        agree = float((want.argmax(1) == got.argmax(1)).mean())
        assert agree >= 0.97, f"top-1 agreement {agree:.3f} < 0.97"
        return f"top-1 agreement {agree:.3f}"
    rel = float(np.abs(want - got).max() / np.abs(want).max())
    assert rel <= LIMITS[precision], f"max rel {rel:.2e} > {LIMITS[precision]}"
    return f"max rel {rel:.2e}"


def batch_edges(out: Path) -> str:
    from kompakt.errors import ShapeError
    from kompakt.runtime import load

    with load(out / "tensorrt-fp32") as engine:
        top = engine.max_batch
        for batch in (1, top):
            engine.run(np.zeros((batch, 1, 8, 8), np.float32))
        try:
            engine.run(np.zeros((top + 1, 1, 8, 8), np.float32))
        except ShapeError as error:
            message = str(error)
        else:
            raise AssertionError(f"batch {top + 1} above the max was accepted")
    kompakt(
        "deploy",
        str(out / "static.onnx"),
        "-o",
        str(out / "static-trt"),
        "--backend",
        "tensorrt",
        "--force",
    )
    with load(out / "static-trt") as engine:
        engine.run(np.zeros((4, 1, 8, 8), np.float32))
    return f"1 and {top} run; {top + 1}: {message[:60]}...; static batch 4 built and ran"


def threads(out: Path) -> str:
    from cuda.bindings import runtime as cudart

    from kompakt.runtime import load

    x = np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32)
    with load(out / "tensorrt-fp32") as engine:
        want = engine.run(x)
        used = []
        errors: list[BaseException] = []

        def work():
            try:
                for _ in range(50):
                    assert np.array_equal(engine.run(x), want)
            except BaseException as error:
                errors.append(error)

        for _ in range(2):
            workers = [threading.Thread(target=work) for _ in range(8)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            free, total = cudart.cudaMemGetInfo()[1:]
            used.append(total - free)
        assert not errors, errors[0]
        assert used[1] <= used[0] + 2**20, f"device memory grew {used[0]} -> {used[1]}"
    return f"8 threads x 50 runs x 2 rounds equal; device memory {used[0] / 2**20:.0f} MiB flat"


def relocate(out: Path) -> str:
    from kompakt.runtime import load

    moved = out / "moved"
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(out / "tensorrt-fp32", moved)
    plan = moved / "model.plan"
    before = plan.stat().st_mtime
    with load(moved) as engine:
        engine.run(np.zeros((1, 1, 8, 8), np.float32))
    assert plan.stat().st_mtime == before, "the plan was rebuilt"
    manifest = json.loads((moved / "kompakt.json").read_text())
    manifest["backend_info"]["gpu"] = "another GPU"
    (moved / "kompakt.json").write_text(json.dumps(manifest))
    try:
        load(moved)
    except Exception as error:  # the hash or the fingerprint check refuses it
        return f"reloaded without rebuild; edited fingerprint refused: {str(error)[:60]}..."
    raise AssertionError("a plan with a foreign fingerprint was loaded")


def bench(out: Path) -> str:
    report = out / "bench"
    kompakt(
        "bench",
        str(out / "tensorrt-fp32"),
        str(out / "onnxruntime-cuda-fp32"),
        "--batches",
        "32",
        "--duration-s",
        "2",
        "-o",
        str(report),
    )
    results = json.loads((report / "results.json").read_text())
    p50 = {b["backend"]: b["latency"]["32"]["p50_ms"] for b in results["bundles"]}
    assert p50["tensorrt"] <= p50["onnxruntime-cuda"] * 1.05, f"p50 at batch 32: {p50}"
    return f"p50 b32: tensorrt {p50['tensorrt']:.3f} ms, ort-cuda {p50['onnxruntime-cuda']:.3f} ms"


def gpu_tests() -> str:
    env = {**os.environ, "KOMPAKT_REQUIRE_GPU": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu or tensorrt"],
        env=env,
        capture_output=True,
        text=True,
    )
    last = (run.stdout.strip().splitlines() or [""])[-1]
    assert run.returncode == 0, last
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/gpu_smoke")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [("preflight", preflight), ("prepare", lambda: prepare(out) and "trained, exported")]
    steps += [(f"deploy {b} {p}", lambda b=b, p=p: deploy(out, b, p)) for b, p in MATRIX]
    steps += [(f"parity {b} {p}", lambda b=b, p=p: parity(out, b, p)) for b, p in MATRIX]
    steps += [
        ("batch edges", lambda: batch_edges(out)),
        ("8 threads", lambda: threads(out)),
        ("relocate + fingerprint", lambda: relocate(out)),
        ("bench b32", lambda: bench(out)),
        ("pytest -m 'gpu or tensorrt'", gpu_tests),
    ]
    rows, broken = [], False
    for name, step in steps:
        if broken:
            rows.append({"step": name, "status": "NOT RUN", "detail": "an earlier step failed"})
            continue
        start = time.perf_counter()
        try:
            detail, status = str(step()), "PASS"
        except BaseException as error:  # every failure is a row, with its one-line cause
            detail = f"{type(error).__name__}: {str(error).strip()[:200]}"
            status = "FAIL"
            if os.environ.get("KOMPAKT_DEBUG"):
                traceback.print_exc()
        rows.append(
            {
                "step": name,
                "status": status,
                "detail": detail,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        broken = broken or (status == "FAIL" and name in ("preflight", "prepare"))
    width = max(len(r["step"]) for r in rows)
    for row in rows:
        print(f"{row['status']:<8} {row['step']:<{width}}  {row['detail']}")
    (out / "gpu_smoke.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["status"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
