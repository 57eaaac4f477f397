"""The architectures users bring (issue 25), at small sizes: Hugging Face ResNet-18, MobileNetV2,
ViT and ConvNeXt (random weights from their configs, examples/hf_models.py) and a model defined
here, each from the CLI as a user would: train 1 epoch -> compress --ratio 10 -> export ->
deploy ONNX Runtime FP32 and INT8 -> verify the golden samples -> PyTorch parity."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from clirun import kompakt

pytest.importorskip("transformers")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hf_models.py"
DATA = "synthetic:channels=3,image_size=32,samples=400"

OWN = textwrap.dedent(
    """
    from torch import nn

    def small_cnn(num_classes, in_channels):
        return nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=4), nn.ReLU(),  # grouped: skipped, said why
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )
    """
)

MATRIX = {
    "resnet18": (f"{EXAMPLES}:resnet", ["width=0.25"]),
    "mobilenet_v2": (f"{EXAMPLES}:mobilenet_v2", ["width=0.5"]),
    "vit": (f"{EXAMPLES}:vit", ["width=0.5"]),
    "convnext": (f"{EXAMPLES}:convnext", ["width=0.25"]),
    "own": (None, []),
}


def run(*args) -> str:
    proc = kompakt(*args)
    assert proc.returncode == 0, f"kompakt {' '.join(map(str, args))}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(MATRIX))
def test_the_architecture_matrix_end_to_end(arch, tmp_path):
    source, model_args = MATRIX[arch]
    if source is None:
        (tmp_path / "own.py").write_text(OWN)
        source = f"{tmp_path / 'own.py'}:small_cnn"
    extra = [a for arg in model_args for a in ("--model-arg", arg)]
    run("train", "--model", source, *extra, "--data", DATA, "--epochs", "1", "--quiet",
        "--out", tmp_path / "dense")  # fmt: skip
    out = run("compress", tmp_path / "dense" / "best.pt", "--ratio", "10",
              "--finetune-epochs", "0", "--calib-samples", "32", "-o", tmp_path / "tt",
              "--json")  # fmt: skip
    result = json.loads(out)
    report = result.get("report") or ""
    assert "tt-" in str(report) or result["params"] > 0
    run("export", tmp_path / "tt" / "best.pt", "-o", tmp_path / "tt.onnx")
    for precision in ("fp32", "int8"):
        bundle = tmp_path / f"b-{precision}"
        guard = ["--max-accuracy-drop", "1.0"] if precision == "int8" else []
        run("deploy", tmp_path / "tt.onnx", "-o", bundle, "--precision", precision, *guard,
            "--calib-data", DATA, "--calib-samples", "32", "--eval-samples", "60",
            "--ckpt", tmp_path / "tt" / "best.pt")  # fmt: skip
        manifest = json.loads((bundle / "kompakt.json").read_text())
        parity = manifest["parity"]["vs_pytorch"]
        if precision == "fp32":
            assert parity["max_rel"] <= 1e-3, parity
        else:  # the accuracy guard keeps sensitive layers in float until the drop is <= 1
            assert manifest["accuracy"]["drop_points"] <= 1.0, manifest["accuracy"]
        verified = run("verify", bundle)
        assert "golden samples: ok" in verified, verified
