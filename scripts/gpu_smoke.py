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
        # listed is not loaded: the EP's shared library links CUDA / cuDNN / TensorRT only
        # when a session asks for it, and falls back to the CPU with a warning if it cannot
        session = ort.InferenceSession(_one_node_model(), providers=[needed])
        active = session.get_providers()[0]
        assert active == needed, f"{needed} did not load (ONNX Runtime fell back to {active})"
    major = tensorrt.__version__.split(".")[0]
    assert major == "10", f"tensorrt {tensorrt.__version__}; ORT's TensorRT EP links 10.x"
    import pytest  # noqa: F401  (the last step runs it)

    from kompakt.machine import package_version

    # the distribution names and versions `kompakt list backends` shows
    names = ("onnxruntime-gpu", "tensorrt", "cuda-python")
    return ", ".join(f"{name} {package_version(name)}" for name in names)


def _one_node_model() -> bytes:
    """A one-Relu ONNX graph, to make ONNX Runtime load an execution provider for real."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "preflight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


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
    for model in COMPRESSED:  # the layers kompakt exists for, not only a dense LeNet
        run = out / model
        kompakt("train", "--model", model, "--data", "mnist5k", "--epochs", "1", "-o", str(run),
                "--quiet")  # fmt: skip
        kompakt("export", str(run / "best.pt"), "-o", str(out / f"{model}.onnx"))
        kompakt("deploy", str(out / f"{model}.onnx"), "-o", str(out / f"{model}-cpu"), "--force")
    return {"onnx": out / "lenet.onnx", "static": out / "static.onnx", "cpu": out / "cpu"}


COMPRESSED = ("garipov-tt-conv-tt-fc", "meta-head")


def compressed_models(out: Path) -> str:
    """Each compressed model through native TensorRT FP32 and FP16, against ORT CPU on real
    mnist5k test images."""
    from kompakt.data import load_dataset
    from kompakt.runtime import load

    x = load_dataset("mnist5k").split("test")[0][:32].numpy()
    found = []
    for model in COMPRESSED:
        for precision in ("fp32", "fp16"):
            folder = out / f"{model}-tensorrt-{precision}"
            kompakt("deploy", str(out / f"{model}.onnx"), "-o", str(folder), "--backend",
                    "tensorrt", "--precision", precision, "--force")  # fmt: skip
            with load(out / f"{model}-cpu") as cpu, load(folder) as gpu:
                want, got = cpu.run(x), gpu.run(x)
            rel = float(np.abs(want - got).max() / np.abs(want).max())
            assert rel <= LIMITS[precision], f"{model} {precision}: max rel {rel:.2e}"
            found.append(f"{model} {precision} {rel:.1e}")
    return "; ".join(found)


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
    from kompakt.data import load_dataset
    from kompakt.runtime import load

    # real digits: INT8 was calibrated on them; N(0,1) noise says little about its parity
    x = load_dataset("digits").split("test")[0][:32].numpy()
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
    from kompakt.errors import KompaktError

    try:
        load(moved)
    except KompaktError as error:  # the hash or the fingerprint check, nothing else
        return f"reloaded without rebuild; edited fingerprint refused: {str(error)[:60]}..."
    raise AssertionError("a plan with a foreign fingerprint was loaded")


def relocate_ort_tensorrt(out: Path) -> str:
    """An onnxruntime-tensorrt bundle copied elsewhere reuses its engine cache (its second load
    is much faster than the first, which built the engine), and runs from a read-only copy."""
    import os
    import stat

    from kompakt.runtime import load

    x = np.zeros((1, 1, 8, 8), np.float32)
    moved = out / "moved-ort-trt"
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(out / "onnxruntime-tensorrt-fp32", moved)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        with load(moved) as engine:
            engine.run(x)
        seconds.append(time.perf_counter() - start)
    assert seconds[1] < 0.5 * seconds[0], f"engine cache not reused: loads took {seconds}"
    frozen = out / "read-only-ort-trt"
    shutil.rmtree(frozen, ignore_errors=True)
    shutil.copytree(moved, frozen)
    for path in [frozen, *frozen.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with load(frozen) as engine:
            engine.run(x)
    finally:
        for path in [frozen, *frozen.rglob("*")]:
            os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
    return f"loads {seconds[0]:.1f} s then {seconds[1]:.1f} s (cache reused); read-only copy ran"


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
    # reported, not asserted: on an 8x8 LeNet both are Python and launch overhead
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
        ("relocate ort-tensorrt + read-only", lambda: relocate_ort_tensorrt(out)),
        ("compressed models on tensorrt", lambda: compressed_models(out)),
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
