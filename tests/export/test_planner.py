"""The TT contraction planner (issue 16): every plan computes the same layer, the cost model
is fitted and cached, and `auto` picks what the cost model says on cases with a known answer."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kompakt.export import ExportConfig, export_onnx
from kompakt.export import cost_model as cm
from kompakt.export.exporter import apply_tt_mode, estimate_forms, fixed_form
from kompakt.layers import TTConv2d, TTLinear, tt


def test_every_plan_of_a_tt_linear_computes_the_dense_layer():
    torch.manual_seed(0)
    layer = TTLinear(120, 60, (2, 3, 4, 5), (3, 2, 2, 5), ranks=3).double()
    x = torch.randn(7, 120, dtype=torch.float64)
    reference = x @ layer.weight_dense().t() + layer.bias
    forms = layer.export_forms()
    assert len(forms) == 2 + 1 + 2 * (2**3 - 1)  # factored, dense, all merged, 7 x 2 more
    for form in forms:
        candidate = copy.deepcopy(layer).export_as(form)
        assert (candidate(x) - reference).abs().max() < 1e-10, form
        if form != "dense":
            n, m, r, direction = layer._train(form)
            gemms = layer.export_ops((7, 120), form)
            macs = sum(c * a * k * b for _, c, a, k, b in gemms)
            assert macs == tt.tt_matvec_macs(n, m, r, 7, direction)


def test_tt_conv_separable_form_is_the_same_convolution():
    torch.manual_seed(0)
    layer = TTConv2d(12, 10, 3, stride=2, padding=1, ranks=3, in_modes=(3, 4), out_modes=(2, 5))
    layer = layer.double()
    x = torch.randn(2, 12, 9, 9, dtype=torch.float64)
    reference = layer._conv(x, layer.kernel())
    for mode in ("separable", "factored"):
        layer.forward_mode = mode
        assert (layer(x) - reference).abs().max() < 1e-10, mode


def test_lowered_tt_conv_is_the_dense_kernel_and_int8_quantises_both_convs(tmp_path):
    """The lowered form (grouped spatial conv + 1x1 conv with stored kernels) computes the TT
    kernel's convolution exactly; in ONNX its two convs have initializer weights, so INT8
    quantises both (the factored / separable forms rebuild kernels in-graph, which stay float),
    and the INT8 outputs stay within a 30 dB SQNR of FP32."""
    from kompakt.deploy.quantize import quantizable_nodes, quantize_int8

    torch.manual_seed(0)
    layer = TTConv2d(12, 10, 3, stride=2, padding=1, ranks=3, in_modes=(3, 4), out_modes=(2, 5))
    x = torch.randn(2, 12, 9, 9, dtype=torch.float64)
    double = copy.deepcopy(layer).double()
    reference = double._conv(x, double.kernel())
    lowered = double.lowered()
    assert all(type(m) is nn.Conv2d for m in lowered) and lowered[0].groups == 12
    torch.testing.assert_close(lowered(x), reference, rtol=1e-10, atol=1e-10)
    assert "lowered" in layer.export_forms()
    assert (
        layer.export_costs((2, 12, 9, 9))["lowered"]
        == layer.export_costs((2, 12, 9, 9))["separable"]
    )
    conv = nn.Sequential(TTConv2d(64, 64, 3, padding=1, ranks=2), nn.ReLU())
    example = torch.randn(16, 64, 8, 8)
    paths = {}
    for form in ("separable", "lowered"):
        model = nn.Sequential(fixed_form(conv[0], form), nn.ReLU())
        paths[form] = tmp_path / f"{form}.onnx"
        assert export_onnx(model, paths[form], ExportConfig(), example).ok
    assert len(quantizable_nodes(paths["lowered"])) == 2
    result = quantize_int8(paths["lowered"], tmp_path / "q.onnx", example.numpy())
    assert result.excluded_nodes == []
    q = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(str(paths["lowered"]), providers=["CPUExecutionProvider"])
    got = q.run(None, {q.get_inputs()[0].name: example.numpy()})[0]
    want = f.run(None, {f.get_inputs()[0].name: example.numpy()})[0]
    sqnr = 10 * np.log10((want**2).sum() / ((want - got) ** 2).sum())
    assert sqnr > 30, sqnr
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("Conv") == 2 and "DequantizeLinear" in ops
    assert not any(result.kept_float.values()), result.kept_float
    separable = quantize_int8(paths["separable"], tmp_path / "s.onnx", example.numpy())
    rebuilt = "constant weight rebuild (stays factored in the file)"
    assert separable.kept_float[rebuilt]  # its 1x1 kernel is rebuilt in-graph: stays float


def test_planned_exports_keep_parity_and_store_only_the_cores(tmp_path):
    """A merged-core plan and the separable TT-conv in ONNX Runtime equal PyTorch; the file
    keeps the small cores (merging happens at load), not the merged or rebuilt weights."""
    torch.manual_seed(0)
    linear = nn.Sequential(TTLinear(4096, 1024, (4, 8, 8, 16), (4, 4, 8, 8), ranks=4))
    example = torch.randn(3, 4096)
    for form in ("factored[2-2:rtl]", "factored[1-3:ltr]"):
        model = nn.Sequential(fixed_form(linear[0], form))
        report = export_onnx(model, tmp_path / "l.onnx", ExportConfig(), example)
        assert report.ok and report.parity[0]["max_rel"] < 1e-4
        cores = sum(c.numel() for c in linear[0].cores) * 4 + 1024 * 4
        assert report.file_bytes < cores + 16_384, (form, report.file_bytes, cores)
    conv = nn.Sequential(TTConv2d(64, 64, 3, padding=1, ranks=2))
    conv = nn.Sequential(fixed_form(conv[0], "separable"))
    report = export_onnx(conv, tmp_path / "c.onnx", ExportConfig(), torch.randn(2, 64, 8, 8))
    assert report.ok
    cores = sum(c.numel() for c in conv[0].cores) * 4
    assert report.file_bytes < cores + 16_384 < 64 * 64 * 9 * 4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node}
    assert "Conv" in ops and "Einsum" not in ops


def test_fit_recovers_known_weights_and_never_goes_negative():
    rng = np.random.default_rng(0)
    rows = rng.uniform(1, 100, size=(40, 3))
    rows[:, 0] = 1.0
    truth = np.array([2e-6, 3e-8, 1e-9])
    seconds = rows @ truth
    assert np.allclose(cm._fit(rows.tolist(), seconds.tolist()), truth, rtol=1e-6)
    # a feature that only hurts gets weight 0, not a negative one
    seconds = rows[:, :2] @ truth[:2] * (1 - 0.001 * rows[:, 2])
    assert min(cm._fit(rows.tolist(), seconds.tolist())) >= 0


def test_cost_model_is_calibrated_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KOMPAKT_CACHE_DIR", str(tmp_path))
    calls = []
    fake = cm.CostModel({k: [1.0] * 6 for k in cm.KINDS}, {})

    def calibrate(threads=None):
        calls.append(threads)
        return cm.CostModel(fake.weights, cm._key(ort, threads))

    monkeypatch.setattr(cm, "calibrate", calibrate)
    first = cm.load_or_calibrate(2)
    second = cm.load_or_calibrate(2)
    assert calls == [2] and first.weights == second.weights
    (cached,) = tmp_path.glob("cost-model-*.json")
    saved = json.loads(cached.read_text())
    assert saved["key"]["threads"] == 2 and saved["key"]["onnxruntime"] == ort.__version__
    cached.write_text("{not json")  # a damaged cache is recalibrated, not trusted
    cm.load_or_calibrate(2)
    assert calls == [2, 2]


def _choice(weights: dict, layer: nn.Module, example: torch.Tensor) -> str:
    model = cm.CostModel(weights, {})
    config = ExportConfig(max_batch=64)
    _, records = apply_tt_mode(
        nn.Sequential(layer),
        "auto",
        (1, 8, 64),
        example,
        estimate=lambda m, s, f: estimate_forms(m, s, f, config, model),
    )
    return records[0]["form"]


def test_auto_picks_what_a_known_cost_model_says():
    """Two machines with a known answer: where every op costs the same fixed overhead, the
    fewest ops win (everything merged into one core: 1 GEMM, ties -> the small file, so the
    plan over dense); where time is multiply-adds, the fewest multiply-adds win."""
    torch.manual_seed(0)
    layer = TTLinear(4096, 1024, (4, 8, 8, 16), (4, 4, 8, 8), ranks=4)
    example = torch.randn(1, 4096)
    overhead_only = {"gemm": [1e-5, 0, 0, 0, 0], "conv": [1e-5] + [0] * 5, "copy": [1e-5, 0]}
    form = _choice(overhead_only, copy.deepcopy(layer), example)
    assert form == "factored[4:ltr]"
    macs_only = {"gemm": [0, 0, 1e-9, 0, 0], "conv": [0, 1e-9, 0, 0, 0, 0], "copy": [0, 0]}
    costs = layer.export_costs((64, 4096))
    form = _choice(macs_only, copy.deepcopy(layer), example)
    assert costs[form] == min(costs.values()) and form not in ("dense", "factored[4:ltr]")
    # a TT-conv whose chain has the fewest multiply-adds but whose per-call overhead is huge
    conv = TTConv2d(16, 16, 3, padding=1, ranks=2)
    per_call = {"gemm": [0, 1e-6, 0, 0, 0], "conv": [0, 1e-9, 0, 0, 0, 0], "copy": [0, 0]}
    assert _choice(per_call, conv, torch.randn(1, 16, 8, 8)) != "chain"


def test_export_records_the_plan_in_the_report_and_the_metadata(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(TTLinear(4096, 1024, (4, 8, 8, 16), (4, 4, 8, 8), ranks=4))
    report = export_onnx(model, tmp_path / "m.onnx", ExportConfig(), torch.randn(2, 4096))
    layer = report.layers[0]
    assert layer["chosen_by"].startswith("cost model") and layer["candidates"] == 17
    assert layer["form"] in layer["predicted_ms"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    (recorded,) = json.loads(meta["tt_layers"])
    assert recorded["form"] == layer["form"]
    if layer["form"].startswith("factored["):
        assert recorded["plan"] == layer["form"]
    counted = export_onnx(
        model, tmp_path / "n.onnx", ExportConfig(tt_plan="macs"), torch.randn(2, 4096)
    )
    assert counted.layers[0]["chosen_by"] == "counted multiply-adds"


@pytest.mark.parametrize("bad", [{"tt_plan": "fast"}, {"plan_threads": 0}])
def test_planner_options_are_validated(bad):
    from kompakt.errors import ConfigError

    with pytest.raises(ConfigError):
        ExportConfig(**bad)
