"""Golden samples: every bundle carries inputs and the build's FP32 outputs; `kompakt verify` and
`load(verify=True)` re-check them wherever the bundle runs and refuse drift."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bundles import bundle
from clirun import kompakt
from kompakt.cli import cli
from kompakt.runtime import RUNNERS, BundleError, GoldenDriftError, load
from kompakt.runtime.golden import tolerance


@pytest.fixture(scope="module")
def bundles(lenet_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return {
        "fp32": bundle(lenet_onnx, root / "fp32"),
        "int8": bundle(lenet_onnx, root / "int8", precision="int8", calib_data="digits"),
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_fresh_bundle_verifies_on_the_machine_that_built_it(bundles, precision):
    manifest = json.loads((bundles[precision] / "kompakt.json").read_text())
    record = manifest["golden"]
    assert record["samples"] == 32 and record["file"] in manifest["files"]  # hashed like any file
    with np.load(bundles[precision] / record["file"]) as data:
        assert data["inputs"].shape == (32, 1, 8, 8) and data["reference"].shape == (32, 10)
    with load(bundles[precision], verify=True) as engine:
        result = engine.verify()
    assert result["ok"] and result["max_rel"] <= record["tolerance"]["max_rel"]
    if precision == "fp32":
        assert result["max_rel"] < 1e-5


class _Drifting:
    """Wraps a runner so that its outputs drift by `scale` (another machine computing wrong)."""

    scale = 0.0

    def __init__(self, inner):
        self.inner = inner

    def run(self, x):
        out = self.inner.run(x)
        return out + self.scale * np.abs(out).max() * np.sign(np.sin(np.arange(out.size))).reshape(
            out.shape
        )

    def close(self):
        self.inner.close()


@pytest.fixture
def drifting(monkeypatch):
    original = RUNNERS.get("onnxruntime")
    monkeypatch.setattr(RUNNERS, "get", lambda name: lambda *args: _Drifting(original(*args)))
    yield _Drifting
    _Drifting.scale = 0.0


def test_drift_beyond_the_recorded_tolerance_is_refused(bundles, drifting):
    drifting.scale = 0.5  # outputs off by half their range: labels change
    with load(bundles["fp32"]) as engine:
        result = engine.verify()
    assert not result["ok"] and result["max_rel"] > result["tolerance"]["max_rel"]
    with pytest.raises(GoldenDriftError, match="rebuild it here"):
        load(bundles["fp32"], verify=True)
    runner = CliRunner()
    out = runner.invoke(cli, ["verify", str(bundles["fp32"])])
    assert out.exit_code == 1 and "DRIFT" in out.output


def test_drift_within_rounding_is_accepted(bundles, drifting):
    drifting.scale = 1e-7
    with load(bundles["int8"]) as engine:
        assert engine.verify()["ok"]


def test_cli_verify_passes_on_a_good_bundle(bundles):
    proc = kompakt("verify", bundles["int8"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_bundles_without_golden_samples_say_so(bundles, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundles["fp32"], old)
    manifest = json.loads((old / "kompakt.json").read_text())
    manifest.pop("golden")
    (old / "kompakt.json").write_text(json.dumps(manifest))
    with load(old) as engine, pytest.raises(BundleError, match="no golden samples"):
        engine.verify()


def test_tolerance_is_three_times_the_build_error_above_a_precision_floor():
    assert tolerance("fp32", {"max_rel": 1e-7, "top1_agreement": 1.0}, 32) == {
        "max_rel": 1e-4,
        "min_top1_agreement": 1.0 - 2 / 32,
    }
    assert tolerance("int8", {"max_rel": 0.05, "top1_agreement": 0.9}, 10)[
        "max_rel"
    ] == pytest.approx(0.15)
