"""CONTRIBUTING's promise, end to end: a layer, a backend and a metric defined in one module
outside kompakt (tests/toy_plugin.py) go through compress, checkpoint, export, deploy, the
runtime, bench, the report and compare without touching a kompakt file."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from kompakt.deploy import DeployConfig, build_bundle
from kompakt.export import ExportConfig, export_onnx
from kompakt.inspect import inspect_model
from kompakt.layers import LAYERS
from kompakt.models import apply_layer_specs_, compress_, layer_specs, parse_compression
from kompakt.runtime import load
from kompakt.runtime_bench.bench import compare, run
from kompakt.runtime_bench.metrics import METRICS


@pytest.fixture(scope="module")
def toy():
    module = importlib.import_module("toy_plugin")
    module.register()
    yield module
    module.unregister()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


def test_a_plugin_layer_compresses_reloads_inspects_and_exports(toy, tmp_path):
    model = _model()
    config = parse_compression("lowrank:rank=4")
    assert isinstance(config, toy.LowRankConfig) and config.rank == 4
    report = compress_(model, config, filter_fn=lambda name, m: name == "1")
    assert [row["kind"] for row in report.layers] == ["toy-low-rank"]
    specs = layer_specs(model)
    assert specs == [{"name": "1", "type": "toy-low-rank", "args": model[1].init_args()}]
    fresh = apply_layer_specs_(_model(), specs)  # what a checkpoint reload does
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(fresh(x), model(x))
    rows = {r["name"]: r for r in inspect_model(model, (1, 8, 8))["layers"]}
    assert rows["1"]["macs"] == 4 * (64 + 48)
    for mode in ("factored", "dense"):  # two MatMuls (U, V) vs one Gemm per linear
        out = export_onnx(model, tmp_path / f"{mode}.onnx", ExportConfig(tt_mode=mode), x)
        assert out.ok and out.layers[0]["form"] == mode
        assert out.op_counts.get("MatMul", 0) == (2 if mode == "factored" else 0)
    assert "toy-low-rank" in LAYERS


@pytest.mark.slow
def test_a_plugin_backend_and_metric_go_through_deploy_runtime_bench_and_report(toy, tmp_path):
    model = _model()
    x = torch.randn(4, 1, 8, 8)
    export_onnx(model, tmp_path / "m.onnx", example_input=x)
    manifest = build_bundle(
        tmp_path / "m.onnx", tmp_path / "b", DeployConfig(backend="toy-reference")
    )
    assert manifest["artifact"] == "model.reference.onnx"
    assert manifest["parity"]["vs_source_onnx"]["max_rel"] < 1e-5
    with load(tmp_path / "b") as engine:
        np.testing.assert_allclose(engine.run(x.numpy()), model(x).detach().numpy(), atol=1e-5)
    results = run(
        [tmp_path / "b"],
        (1, 2),
        warmup_s=0.01,
        min_runs=3,
        duration_s=0.05,
        rounds=1,
        report=tmp_path / "report",
        quiet=True,
    )
    entry = results["bundles"][0]
    assert entry["backend"] == "toy-reference" and entry["latency"]["2"]["runs"] >= 1
    overhead = entry["metrics"]["toy_overhead_kib"]
    assert overhead == pytest.approx((entry["bundle_bytes"] - entry["artefact_bytes"]) / 1024)
    assert "bundle overhead KiB" in (tmp_path / "report" / "report.md").read_text()
    assert "metric_toy_overhead_kib" in (tmp_path / "report" / "results.csv").read_text()
    worse = json.loads(json.dumps(results))
    worse["bundles"][0]["metrics"]["toy_overhead_kib"] = overhead * 1.5
    assert any("bundle overhead" in r for r in compare(results, worse))
    assert not any("bundle overhead" in r for r in compare(results, results))
    assert "toy_overhead_kib" in METRICS


def test_unregistering_leaves_no_trace(toy):
    toy.unregister()
    try:
        assert "toy-low-rank" not in LAYERS and "toy_overhead_kib" not in METRICS
    finally:
        toy.register()


@pytest.mark.slow
def test_a_plugin_compression_goes_through_kompakt_compress_from_the_cli(tmp_path):
    """`kompakt --plugin toy_plugin compress CKPT --method lowrank --method-args rank=4`: the
    plugin's method is found in the registry, fitted, fine-tuned and checkpointed; the CLI lists
    it and refuses an unknown method with the valid names."""
    from pathlib import Path

    from clirun import kompakt
    from kompakt.models import load_checkpoint

    env = {"PYTHONPATH": str(Path(__file__).parent)}
    dense = tmp_path / "dense"
    train = ("train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--quiet")
    run = kompakt(*train, "--model-arg", "hidden=[256]", "--out", str(dense))
    assert run.returncode == 0, run.stderr
    out = tmp_path / "lowrank"
    args = ("compress", str(dense / "best.pt"), "--method", "lowrank", "--method-args", "rank=4")
    run = kompakt(
        "--plugin",
        "toy_plugin",
        *args,
        "--finetune-epochs",
        "1",
        "--quiet",
        "-o",
        str(out),
        env=env,
    )
    assert run.returncode == 0, run.stderr
    layers = load_checkpoint(out / "best.pt")["model"]["layers"]
    assert [(s["type"], s["args"]["rank"]) for s in layers] == [("toy-low-rank", 4)]
    listed = kompakt("--plugin", "toy_plugin", "list", "compressions", "--live", env=env)
    assert "lowrank" in listed.stdout, listed.stderr
    unknown = kompakt(*args, "-o", str(tmp_path / "x"))  # no plugin: not registered
    assert unknown.returncode == 1
    assert "unknown compression 'lowrank'" in unknown.stderr and "tt" in unknown.stderr
