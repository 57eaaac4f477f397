"""MLPerf LoadGen scenarios in `kompakt bench`: a few seconds each on lenet5, LoadGen's minimums
lowered through its settings (tests only), every result field checked."""

from __future__ import annotations

import json

import pytest

from kompakt.errors import BackendUnavailable, ConfigError
from kompakt.runtime_bench import loadgen
from kompakt.runtime_bench.bench import BenchConfig, compare_table, run_config

pytest.importorskip("mlperf_loadgen", reason="MLPerf LoadGen is the kompakt[bench] extra")

QUICK = {"duration_s": 0.5, "min_runs": 20, "rounds": 1, "quiet": True}


@pytest.mark.parametrize(
    "scenario, metric, better",
    [
        ("single-stream", "p90_latency_ms", "lower"),
        ("multi-stream", "p99_query_latency_ms", "lower"),
        ("offline", "samples_per_s", "higher"),
    ],
)
def test_each_scenario_reports_its_metric_and_loadgens_verdict(
    lenet_bundle, tmp_path, scenario, metric, better
):
    config = BenchConfig(scenario=scenario, data="digits", report=str(tmp_path), **QUICK)
    results = run_config([lenet_bundle], config)
    run = results["bundles"][0]["scenario"]
    assert run["scenario"] == scenario and run["metric"] == metric and run["better"] == better
    assert run["value"] > 0 and run["validity"] in ("VALID", "INVALID")
    assert run["queries"] >= 1 and run["p50_ms"] <= run["p99_ms"]
    assert run["loadgen_version"] and run["settings"]["duration_s"] == 0.5
    assert results["bundles"][0]["latency"] == {}  # LoadGen replaced the timing loop
    logs = tmp_path / "loadgen" / results["bundles"][0]["name"] / "round1"
    assert (logs / "mlperf_log_summary.txt").is_file() and (
        logs / "mlperf_log_detail.txt"
    ).is_file()
    assert f"MLPerf LoadGen: {scenario}" in (tmp_path / "report.md").read_text()


def test_server_search_finds_the_highest_qps_under_the_bound(lenet_bundle, tmp_path):
    config = BenchConfig(
        scenario="server",
        target_latency_ms=10.0,
        search_steps=3,
        report=str(tmp_path),
        **QUICK,
    )
    run = run_config([lenet_bundle], config)["bundles"][0]["scenario"]
    assert len(run["trials"]) == 3
    met = [t["target_qps"] for t in run["trials"] if t["latency_bound_met"]]
    assert run["value"] == (max(met) if met else None)
    assert all(t["settings"]["target_latency_ms"] == 10.0 for t in run["trials"])
    assert (tmp_path / "server_qps_p99.png").is_file()


def test_server_search_doubles_then_bisects():
    search = loadgen.ServerSearch(100.0, steps=4)
    for qps, met in ((100.0, True), (200.0, True), (400.0, False)):
        assert search.next == qps
        search.record({"target_qps": qps, "latency_bound_met": met})
    assert search.next == 300.0 and not search.done()
    search.record({"target_qps": 300.0, "latency_bound_met": False})
    assert search.done() and search.best()["target_qps"] == 200.0


def test_compare_understands_loadgen_results():
    def result(value):
        scenario = {"value": value, "better": "higher", "metric": "samples_per_s"}
        return {
            "bundles": [
                {
                    "name": "b",
                    "latency": {},
                    "metrics": {"loadgen_throughput": value},
                    "scenario": scenario,
                }
            ]
        }

    rows = compare_table(result(1000.0), result(800.0))
    row = next(r for r in rows if "LoadGen" in r["what"])
    assert row["old"] == 1000.0 and row["new"] == 800.0


def test_without_loadgen_the_scenario_says_how_to_install(monkeypatch, lenet_bundle):
    import kompakt.runtime.backends.base as base

    real = base.require

    def missing(module, extra, purpose=""):
        if module == "mlperf_loadgen":
            raise BackendUnavailable(f"{purpose} needs it: pip install 'kompakt[{extra}]'")
        return real(module, extra, purpose)

    monkeypatch.setattr(base, "require", missing)
    with pytest.raises(BackendUnavailable, match=r"kompakt\[bench\]"):
        run_config([lenet_bundle], BenchConfig(scenario="offline", **QUICK))


def test_placement_is_recorded_and_checked(lenet_bundle, tmp_path):
    import os

    cpu = sorted(os.sched_getaffinity(0))[0]
    config = BenchConfig(
        batches=(1,), duration_s=0.1, min_runs=5, rounds=1, quiet=True, cpus=str(cpu), spin=True
    )
    results = run_config([lenet_bundle], config)
    settings = results["settings"]
    assert settings["cpus"] == [cpu] and settings["ort_spinning"] is True
    assert {"load_average_1min", "calibration_cv", "cores"} <= set(settings["machine_load"])
    with pytest.raises(ConfigError, match="may only use CPUs"):
        BenchConfig(cpus="4096")
    json.dumps(results)  # everything recorded is JSON


def test_a_runtime_refuses_settings_it_does_not_have(tmp_path, lenet_onnx):
    from bundles import bundle
    from kompakt.runtime import load

    pytest.importorskip("openvino")
    ov = bundle(lenet_onnx, tmp_path / "ov", backend="openvino")
    with pytest.raises(ConfigError, match="openvino runtime has no spin setting"):
        load(ov, tuning={"spin": True})
