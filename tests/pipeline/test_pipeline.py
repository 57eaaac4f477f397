import json

import pytest

from clirun import kompakt
from kompakt.errors import ConfigError
from kompakt.pipeline import load_config

TINY = """
[pipeline]
data = "digits"
epochs = 1
[[models]]
name = "mlp"
model = "mlp"
[[models]]
name = "mlp-tt"
init_from = "mlp"
compress = "tt:ranks=4"
epochs = 1
[export]
max_batch = 16
[deploy]
calib_samples = 32
targets = [
  { backend = "onnxruntime", precision = "fp32" },
  { backend = "onnxruntime", precision = "int8" },
  { backend = "tensorrt", precision = "fp16", optional = true },
]
[bench]
batches = [1, 4]
warmup_s = 0.05
min_runs = 5
duration_s = 0.1
rounds = 1
"""


def pipeline(config, out):
    return kompakt("pipeline", "--config", config, "--out", out, "--json")


@pytest.mark.slow
def test_pipeline_runs_end_to_end_then_skips_cached_stages(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    first = pipeline(config, tmp_path / "out")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    statuses = {(r["stage"], r["name"]): r["status"] for r in result["stages"]}
    assert statuses[("train", "mlp-tt")] == "done"
    assert statuses[("deploy", "mlp-tensorrt-fp16")].startswith("skipped")
    bundles = [row["bundle"] for row in result["summary"]]
    assert bundles == [
        "mlp-onnxruntime-fp32",
        "mlp-onnxruntime-int8",
        "mlp-tt-onnxruntime-fp32",
        "mlp-tt-onnxruntime-int8",
    ]
    assert all(row["top1"] is not None and row["p50_ms"]["1"] > 0 for row in result["summary"])
    # parity vs the PyTorch checkpoint each bundle came from: fp32 tight, int8 loose but there
    parity = {row["bundle"]: row["parity_max_rel"] for row in result["summary"]}
    assert parity["mlp-onnxruntime-fp32"] < 1e-4 and parity["mlp-tt-onnxruntime-fp32"] < 1e-4
    assert 0 < parity["mlp-onnxruntime-int8"] < 0.2
    # the compressed model vs the baseline (the first model), same backend and precision
    ratio = {r["bundle"]: r for r in result["ratios"]}
    assert set(ratio) == {"mlp-tt-onnxruntime-fp32", "mlp-tt-onnxruntime-int8"}
    tt = ratio["mlp-tt-onnxruntime-fp32"]
    assert tt["vs"] == "mlp-onnxruntime-fp32" and tt["fewer_params"] > 1
    by = {row["bundle"]: row for row in result["summary"]}
    dense, small = by["mlp-onnxruntime-fp32"], by["mlp-tt-onnxruntime-fp32"]
    assert tt["speedup"]["4"] == round(dense["p50_ms"]["4"] / small["p50_ms"]["4"], 2)
    assert [t["model"] for t in result["training"]] == ["mlp", "mlp-tt"]
    for name in ("report/report.md", "report/pipeline.md", "report/pareto.png", "summary.json"):
        assert (tmp_path / "out" / name).is_file()
    report = (tmp_path / "out" / "report" / "pipeline.md").read_text()
    assert "## Compressed vs `mlp`" in report and "mlp-tt-onnxruntime-int8" in report

    second = json.loads(pipeline(config, tmp_path / "out").stdout)
    ran = [r for r in second["stages"] if r["status"] == "done"]
    assert ran == []  # everything came from the cache
    kept = sorted((tmp_path / "out" / "history").iterdir())
    assert len(kept) == 2 and all((k / "report" / "pipeline.md").is_file() for k in kept)

    config.write_text(TINY.replace('compress = "tt:ranks=4"', 'compress = "tt:ranks=3"'))
    third = json.loads(pipeline(config, tmp_path / "out").stdout)
    ran = {(r["stage"], r["name"]) for r in third["stages"] if r["status"] == "done"}
    assert ("train", "mlp-tt") in ran and ("train", "mlp") not in ran


def test_default_config_is_the_mnist5k_run():
    config = load_config(None)
    assert config["pipeline"]["data"] == "mnist5k"
    assert [m["name"] for m in config["models"]] == ["dense", "tt", "metahead"]
    assert config["optimize"]["from"] == "dense"  # the optimized model joins the bench


def test_optimize_section_is_checked_against_optimize_config(tmp_path):
    from kompakt.pipeline.runner import parse_config

    path = tmp_path / "o.toml"
    base = "[pipeline]\ndata = 'digits'\n[[models]]\nname = 'a'\n[optimize]\n"
    path.write_text(base + "finetune_epochs = 1\nbatches = [1, 8]\n")
    assert parse_config(load_config(path)).optimize == {
        "from": "a",
        "finetune_epochs": 1,
        "batches": [1, 8],
    }
    path.write_text(base + "from = 'b'\n")
    with pytest.raises(ConfigError, match=r"\[optimize\] from 'b' is not a \[\[models\]\] name"):
        load_config(path)
    path.write_text(base + "finetune_epochz = 1\n")
    with pytest.raises(ConfigError, match="finetune_epochz"):
        load_config(path)


def test_bad_configs_are_clear_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[pipeline]\ndata = 'digits'\nepochz = 1\n[[models]]\nname = 'a'\n")
    with pytest.raises(ConfigError, match=r"unknown keys in \[pipeline\]: \['epochz'\]"):
        load_config(path)
    path.write_text("[pipeline]\ndata = 'digits'\n")
    with pytest.raises(ConfigError, match="at least one"):
        load_config(path)


def test_data_fingerprint_changes_when_the_files_change(tmp_path):
    from kompakt.pipeline.runner import data_fingerprint

    (tmp_path / "a.bin").write_bytes(b"one")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_bytes(b"ignored")
    before = data_fingerprint(str(tmp_path))
    (tmp_path / ".cache" / "x").write_bytes(b"still ignored")
    assert data_fingerprint(str(tmp_path)) == before
    (tmp_path / "a.bin").write_bytes(b"two")  # same size, new content
    assert data_fingerprint(str(tmp_path)) != before
    assert data_fingerprint(None) is None


def test_pareto_front_keeps_only_undominated_points():
    from kompakt.runtime_bench.report import pareto_front

    # (latency, accuracy): 1 is dominated by 0 (slower, less accurate), 3 by 2
    points = [(1.0, 90.0), (2.0, 80.0), (3.0, 95.0), (4.0, 94.0), (0.5, 70.0)]
    assert pareto_front(points) == [4, 0, 2]


def test_baseline_must_name_a_model(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TINY.replace("[pipeline]", '[pipeline]\nbaseline = "nope"'))
    run = pipeline(config, tmp_path / "out")
    assert run.returncode == 1 and "baseline 'nope' is not a [[models]] name" in run.stderr


@pytest.mark.slow
def test_pipeline_optimize_step_joins_the_bench_and_is_cached(tmp_path):
    """An [optimize] section runs `kompakt optimize` on the named model; its bundle is benched
    beside the others (with parity against its own checkpoint), and a re-run reuses it."""
    config = tmp_path / "p.toml"
    config.write_text(
        "[pipeline]\nout = 'runs/p'\ndata = 'digits'\nepochs = 1\n"
        "[[models]]\nname = 'dense'\nmodel = 'garipov-conv-fc'\n"
        "[deploy]\ntargets = [{ backend = 'onnxruntime', precision = 'fp32' }]\n"
        "[bench]\nbatches = [1, 8]\nwarmup_s = 0.1\nmin_runs = 5\nduration_s = 0.3\nrounds = 1\n"
        "[optimize]\nmethods = 'meta,prune'\nprune_ratios = [0.5]\nrounds = 1\n"
        "finetune_epochs = 1\ncalib_samples = 64\nbatches = [1, 8]\n"
    )
    run = kompakt("pipeline", "--config", str(config), cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "p" / "summary.json").read_text())
    rows = {r["bundle"]: r for r in summary["summary"]}
    optimized = next(r for r in rows.values() if r["model"] == "optimized")
    limit = 1e-3 if optimized["precision"] == "fp32" else 0.1  # INT8 rounds: a looser bound
    assert optimized["parity_max_rel"] is not None and optimized["parity_max_rel"] < limit
    assert optimized["bundle"].startswith("optimized-") and optimized["top1"] is not None
    assert optimized["params"] <= rows["dense-onnxruntime-fp32"]["params"]
    again = kompakt("pipeline", "--config", str(config), cwd=str(tmp_path))
    assert again.returncode == 0 and "[optimize] optimized: cached" in again.stderr
