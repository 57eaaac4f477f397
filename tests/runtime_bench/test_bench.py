import json
import subprocess
import sys

import pytest

from bundles import bundle
from kompakt.runtime.manifest import check_schema
from kompakt.runtime_bench.bench import compare, latency_stats, results_schema, run


@pytest.fixture(scope="module")
def two_bundles(lenet_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return [
        bundle(lenet_onnx, root / "fp32"),
        bundle(lenet_onnx, root / "int8", precision="int8", calib_data="digits", calib_samples=32),
    ]


@pytest.fixture(scope="module")
def results(two_bundles, lenet_onnx, tmp_path_factory):
    report = tmp_path_factory.mktemp("report")
    out = run(
        two_bundles,
        (1, 4),
        warmup_s=0.05,
        min_runs=10,
        duration_s=0.1,
        rounds=2,
        data="digits",
        ckpt=str(lenet_onnx.parent / "run" / "best.pt"),
        report=report,
        quiet=True,
    )
    return out, report


def test_results_follow_the_schema_and_statistics_are_sane(results):
    out, _ = results
    check_schema(out, results_schema(), "bench results")
    assert [b["name"] for b in out["bundles"]] == ["fp32", "int8"]
    for entry in out["bundles"]:
        for stats in entry["latency"].values():
            assert stats["runs"] >= 10  # the warm-up runs are not among them
            assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
            assert stats["p99_ms"] <= stats["max_ms"]
        assert entry["peak_rss_mib"] > entry["baseline_rss_mib"] > 0
        assert entry["create_s"] > 0 and entry["first_inference_s"] > 0
        assert entry["accuracy"]["samples"] == 270 and 0 <= entry["accuracy"]["top1"] <= 1
        assert entry["golden"]["ok"] and entry["metrics"]["golden_max_rel"] is not None
        assert entry["parity"]["samples"] == 256
    fp32, int8 = out["bundles"]
    assert fp32["parity"]["max_rel"] < 1e-4
    assert fp32["vs_baseline"]["p50_speedup_b1"] == 1.0
    assert int8["vs_baseline"]["artefact_kib"] > 1  # the Q/DQ model is smaller
    assert out["machine"]["cores"] >= 1 and out["gpu_note"]


def test_every_rendering_is_written(results):
    _, report = results
    for name in ("results.json", "report.md", "results.csv", "latency_vs_batch.png", "pareto.png"):
        assert (report / name).stat().st_size > 0
    text = (report / "report.md").read_text()
    assert "| fp32 | onnxruntime | fp32 |" in text and "p50 speedup" in text
    assert (report / "results.csv").read_text().count("\n") == 1 + 2 * 2  # header + 2 x 2 rows


def test_latency_stats_percentiles():
    stats = latency_stats([0.001 * i for i in range(1, 101)], batch=4)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert stats["throughput_per_s"] == pytest.approx(4 * 1e3 / 50.5)


def test_compare_detects_a_planted_regression(results, tmp_path):
    out, _ = results
    out = json.loads(json.dumps(out))
    for entry in out["bundles"]:  # quiet runs, so only the planted change stands out
        for stats in entry["latency"].values():
            stats["cv"] = 0.02
    slower = json.loads(json.dumps(out))
    slower["bundles"][1]["latency"]["1"]["p50_ms"] *= 1.5
    assert compare(out, out) == []
    regressions = compare(out, slower)
    assert len(regressions) == 1 and regressions[0].startswith("int8 batch 1: p50")
    noisy = json.loads(json.dumps(slower))
    noisy["bundles"][1]["latency"]["1"]["cv"] = 0.4  # +50 % inside a 40 % spread: noise
    assert compare(out, noisy) == []
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(out))
    new.write_text(json.dumps(slower))
    proc = subprocess.run(
        [sys.executable, "-m", "kompakt.cli", "bench", "--compare", str(old), str(new)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "REGRESSION int8 batch 1" in proc.stdout
    assert "p50 b1 ms" in proc.stdout and "+50.0%" in proc.stdout  # the old -> new table
    same = subprocess.run(
        [sys.executable, "-m", "kompakt.cli", "bench", "--compare", str(old), str(old)],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0 and "no regressions" in same.stdout


def test_worker_does_not_import_torch(two_bundles):
    args = [str(two_bundles[0]), "--min-runs", "2", "--duration-s", "0", "--warmup-s", "0"]
    code = (
        "import sys; import kompakt.runtime_bench.worker as w; "
        f"w.main({args!r}); print(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_batches_above_a_bundles_max_are_reported_not_dropped_silently(two_bundles):
    with pytest.warns(UserWarning, match="batch 128 not measured"):
        out = run(
            two_bundles[:1],
            (1, 128),
            warmup_s=0.01,
            min_runs=3,
            duration_s=0.05,
            rounds=1,
            quiet=True,
        )
    entry = out["bundles"][0]
    assert set(entry["latency"]) == {"1"}
    assert any("max batch 64" in w for w in entry["warnings"])


def test_cli_warnings_are_one_line_each(two_bundles):
    from clirun import kompakt

    proc = kompakt(
        "bench",
        two_bundles[0],
        "--batches",
        "1,128",
        "--min-runs",
        "2",
        "--duration-s",
        "0.05",
        "--warmup-s",
        "0",
        "--rounds",
        "1",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert any(ln.startswith("kompakt: warning: ") and "batch 128" in ln for ln in lines)
    assert all(ln.startswith("kompakt: warning: ") for ln in lines), lines
