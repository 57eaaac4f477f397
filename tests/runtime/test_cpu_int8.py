"""INT8 schemes against the CPU's integer instructions: portable is exact everywhere, full-range
is refused at load on x86 CPUs without VNNI (whatever CPU these tests run on)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import kompakt.runtime.cpu as cpu
from bundles import bundle
from kompakt.deploy.quantize import calibration_batch
from kompakt.runtime import load
from kompakt.runtime.cpu import CpuIsaError, int8_isa

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
VNNI = AVX2 | {"avx512f", "avx512_vnni"}
INT16_MAX = 32767


@pytest.mark.parametrize(
    "flags, machine, dot, saturates",
    [
        (AVX2, "x86_64", "avx2", True),
        (frozenset({"sse4_2"}), "x86_64", "sse", True),
        (VNNI, "x86_64", "avx512_vnni", False),
        (AVX2 | {"avx_vnni"}, "AMD64", "avx_vnni", False),
        (frozenset({"fp", "asimd", "asimddp"}), "aarch64", "asimddp", False),
        (frozenset({"fp", "asimd"}), "aarch64", "neon", False),
    ],
)
def test_int8_isa_classifies_the_dot_product_instructions(flags, machine, dot, saturates):
    isa = int8_isa(flags, machine)
    assert isa["dot"] == dot and isa["saturates_full_range"] is saturates


def test_unreadable_x86_flags_are_unknown_not_assumed(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: None)
    assert int8_isa(machine="x86_64")["saturates_full_range"] is None


def _worst_pair_sum(graph: onnx.ModelProto) -> int:
    """Emulate x86's u8 x s8 `vpmaddubsw` on the worst input (every activation byte 255): the
    largest pair sum of adjacent reduction-axis products over all int8 weights."""
    weights = {i.name: i for i in graph.graph.initializer}
    worst = 0
    for node in graph.graph.node:
        init = weights.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if init is None or init.data_type != onnx.TensorProto.INT8:
            continue
        q = np.abs(numpy_helper.to_array(init).astype(np.int64))
        rows = q.reshape(q.shape[0], -1) if q.ndim != 2 else q.T  # Conv (O, K) / MatMul (K, N)^T
        if rows.shape[1] % 2:
            rows = np.pad(rows, ((0, 0), (0, 1)))
        worst = max(worst, int((255 * (rows[:, 0::2] + rows[:, 1::2])).max()))
    return worst


@pytest.fixture(scope="module")
def schemes(lenet_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("schemes")
    return {
        scheme: bundle(
            lenet_onnx, root / scheme, precision="int8", calib_data="digits", int8_scheme=scheme
        )
        for scheme in ("portable", "full-range")
    }


def test_portable_weights_cannot_saturate_and_full_range_ones_can(schemes):
    portable = json.loads((schemes["portable"] / "kompakt.json").read_text())
    full = json.loads((schemes["full-range"] / "kompakt.json").read_text())
    assert portable["quantization"]["scheme"] == "portable"
    assert portable["quantization"]["requires"] is None
    assert portable["quantization"]["max_abs_weight"] <= 64
    assert _worst_pair_sum(onnx.load(schemes["portable"] / portable["artifact"])) <= INT16_MAX
    assert full["quantization"]["max_abs_weight"] > 64
    assert "avx512_vnni" in full["quantization"]["requires"]["x86"]
    assert _worst_pair_sum(onnx.load(schemes["full-range"] / full["artifact"])) > INT16_MAX
    assert full["target"]["int8_isa"] == int8_isa()  # the build CPU is recorded
    assert "/" not in json.dumps(full["quantization"])  # no temp path


def test_portable_keeps_parity_within_the_int8_bound(schemes):
    parity = json.loads((schemes["portable"] / "kompakt.json").read_text())["parity"]
    assert parity["vs_source_onnx"]["max_rel"] < 0.05
    assert parity["vs_source_onnx"]["top1_agreement"] >= 0.97


@pytest.mark.parametrize(
    "flags, machine, refused",
    [(AVX2, "x86_64", True), (VNNI, "x86_64", False), (frozenset({"asimd"}), "aarch64", False)],
)
def test_full_range_is_refused_on_cpus_it_would_saturate_on(
    schemes, monkeypatch, flags, machine, refused
):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    with load(schemes["portable"]) as engine:  # portable loads on every CPU
        assert engine.run(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)
    if refused:
        with pytest.raises(CpuIsaError, match="--int8-scheme portable"):
            load(schemes["full-range"])
    else:
        load(schemes["full-range"]).close()


def test_full_range_on_this_very_cpu(schemes):
    """No monkeypatching: on an AVX2-only machine the refusal is real, on VNNI it loads."""
    if int8_isa()["saturates_full_range"]:
        with pytest.raises(CpuIsaError):
            load(schemes["full-range"])
    else:
        load(schemes["full-range"]).close()


def test_older_int8_bundles_without_a_scheme_count_as_full_range(monkeypatch):
    manifest = {"precision": "int8", "quantization": {"per_channel": True}}
    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    with pytest.raises(CpuIsaError):
        cpu.check_int8_bundle(manifest)
    manifest["quantization"]["cpu_kernels"] = False  # GPU backends never saturate
    cpu.check_int8_bundle(manifest)


@pytest.mark.parametrize("samples", [1, 7, 16, 250, 256, 257, 1000])
@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_batches_are_equal_for_histogram_methods(samples, method):
    batch, used = calibration_batch(samples, method)
    assert 1 <= batch <= 16 and used <= samples
    if method != "minmax":
        assert used % batch == 0 and used >= samples - 15
    else:
        assert used == samples


def test_entropy_calibration_runs_on_a_sample_count_that_is_not_a_multiple_of_16(
    lenet_onnx, tmp_path
):
    out = bundle(
        lenet_onnx,
        tmp_path / "e",
        precision="int8",
        calib_data="digits",
        calib_samples=250,
        calib_method="percentile",
    )
    quantization = json.loads((out / "kompakt.json").read_text())["quantization"]
    assert quantization["calib_samples"] == 250
