"""The install story: package data is shipped, and the Docker images install what CI tests."""

from fnmatch import fnmatch
from pathlib import Path

import pytest

from kompakt._io import parse_toml
from kompakt.pipeline import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_data_file_in_the_package_is_declared_as_package_data():
    config = parse_toml((ROOT / "pyproject.toml").read_text(), "pyproject.toml")
    patterns = config["tool"]["setuptools"]["package-data"]["kompakt"]
    package = ROOT / "src" / "kompakt"
    data_files = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    missing = [f for f in data_files if not any(fnmatch(f, pat) for pat in patterns)]
    assert data_files and not missing


def test_docker_images_and_ci_share_one_install_script():
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "bash scripts/install.sh" in text and 'ENTRYPOINT ["kompakt"]' in text
    assert "scripts/install.sh" in (ROOT / "scripts" / "setup_env.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_example_pipeline_configs_are_valid():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        assert load_config(path)["models"], path


def test_one_onnxruntime_wheel_per_install_and_a_pinned_tensorrt():
    """ONNX Runtime's docs allow one of onnxruntime / onnxruntime-gpu installed: the core never
    requires either, `gpu` brings only the GPU wheel, TensorRT is the major ORT's EP links."""
    project = parse_toml((ROOT / "pyproject.toml").read_text(), "pyproject.toml")["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "onnxruntime" not in core
    assert any(d.startswith("onnxruntime>=") for d in extras["cpu"])
    assert not any(d.startswith("onnxruntime>=") for d in extras["gpu"])
    assert "tensorrt>=10.1,<11" in extras["gpu"]
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "*,gpu,*)" in install and "cpu" in install  # the CPU wheel only without gpu
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "python3 -m venv" in gpu and "test" in gpu  # PEP 668 base; pytest for the smoke
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)


def test_gpu_smoke_fails_its_preflight_cleanly_without_a_gpu(tmp_path):
    """Here there is no GPU: the smoke script must say so in its table (exit 1), run nothing
    else, and never report a GPU result. On a GPU machine the smoke is its own test
    (scripts/gpu_smoke.sh), so this one is skipped there, with the reason."""
    from conftest import _cuda_available

    if _cuda_available():
        pytest.skip("a CUDA GPU is here: scripts/gpu_smoke.sh is the test of this machine")
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    rows = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert run.returncode == 1 and rows[0]["step"] == "preflight" and rows[0]["status"] == "FAIL"
    assert {r["status"] for r in rows[1:]} == {"NOT RUN"} and "FAIL     preflight" in run.stdout


@pytest.mark.slow
def test_the_runtime_only_install_loads_verifies_and_predicts_without_torch(lenet_bundle, tmp_path):
    """Issue 26, 1: `pip install kompakt[cpu]` (numpy + ONNX Runtime, Pillow for predict) in a
    fresh virtual environment: torch, onnx and click are absent, yet a bundle loads, verifies
    and predicts from Python and from the `kompakt` command; other commands say what to
    install."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "--no-deps", "-w", str(wheels)],
        check=True,
    )  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, wheel = venv / "bin" / "python", next(wheels.glob("kompakt-*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[cpu]", "pillow"], check=True
    )
    image = tmp_path / "0000_3.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    code = f"""
import importlib.util, sys, time
start = time.perf_counter()
from kompakt.runtime import load
took = time.perf_counter() - start
absent = [m for m in ("torch", "onnx", "click") if importlib.util.find_spec(m) is None]
assert absent == ["torch", "onnx", "click"], absent
with load({str(lenet_bundle)!r}, verify=True) as engine:
    label = engine.predict([__import__("numpy").zeros((8, 8), "uint8")])[0].label
assert not [m for m in ("torch", "onnx", "click") if m in sys.modules]
print("ok", label, round(took, 3))
"""
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]
    kompakt = venv / "bin" / "kompakt"
    checked = subprocess.run(
        [str(kompakt), "verify", str(lenet_bundle)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "golden samples: ok" in checked.stdout, checked.stderr
    shown = subprocess.run(
        [str(kompakt), "predict", str(lenet_bundle), str(image), "--json"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and json_rows(shown.stdout)[0]["image"] == str(image)
    refused = subprocess.run([str(kompakt), "train"], capture_output=True, text=True)
    assert refused.returncode == 1 and "kompakt[train,cpu]" in refused.stderr


def json_rows(text: str) -> list:
    import json

    return json.loads(text)
