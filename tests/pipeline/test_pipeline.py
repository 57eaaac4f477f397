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
name = "lenet"
model = "lenet5"
[[models]]
name = "lenet-tt"
init_from = "lenet"
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


def test_pipeline_runs_end_to_end_then_skips_cached_stages(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    first = pipeline(config, tmp_path / "out")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    statuses = {(r["stage"], r["name"]): r["status"] for r in result["stages"]}
    assert statuses[("train", "lenet-tt")] == "done"
    assert statuses[("deploy", "lenet-tensorrt-fp16")].startswith("skipped")
    bundles = [row["bundle"] for row in result["summary"]]
    assert bundles == [
        "lenet-onnxruntime-fp32",
        "lenet-onnxruntime-int8",
        "lenet-tt-onnxruntime-fp32",
        "lenet-tt-onnxruntime-int8",
    ]
    assert all(row["top1"] is not None and row["p50_ms"]["1"] > 0 for row in result["summary"])
    for name in ("report/report.md", "report/pareto.png", "summary.json"):
        assert (tmp_path / "out" / name).is_file()

    second = json.loads(pipeline(config, tmp_path / "out").stdout)
    ran = [r for r in second["stages"] if r["status"] == "done"]
    assert ran == []  # everything came from the cache

    config.write_text(TINY.replace('compress = "tt:ranks=4"', 'compress = "tt:ranks=3"'))
    third = json.loads(pipeline(config, tmp_path / "out").stdout)
    ran = {(r["stage"], r["name"]) for r in third["stages"] if r["status"] == "done"}
    assert ("train", "lenet-tt") in ran and ("train", "lenet") not in ran


def test_default_config_is_the_mnist5k_run():
    config = load_config(None)
    assert config["pipeline"]["data"] == "mnist5k"
    assert [m["name"] for m in config["models"]] == ["dense", "tt", "metahead"]


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
