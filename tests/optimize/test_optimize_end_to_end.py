"""`kompakt optimize` end to end from the CLI, on a model defined outside kompakt (the plugin's
toy-cnn, trained with `kompakt --plugin ... train`), with the plugin's low-rank compression and
filter pruning in the search: cost tables, search, build, fine-tune, export, deploy, the
side-by-side bench and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clirun import kompakt

ENV = {"PYTHONPATH": str(Path(__file__).parents[1])}


@pytest.mark.slow
def test_optimize_a_user_model_from_the_cli(tmp_path):
    plugin = ("--plugin", "toy_plugin")
    dense = tmp_path / "dense"
    train = ("train", "--model", "toy-cnn", "--data", "digits", "--epochs", "4", "--quiet")
    run = kompakt(*plugin, *train, "--out", str(dense), env=ENV)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "opt"
    args = [
        *plugin,
        "optimize",
        str(dense / "best.pt"),
        "--methods",
        "lowrank,prune",
        "--prune-ratios",
        "0.5",
        "--batches",
        "1,8",
        "--finetune-epochs",
        "1",
        "--rounds",
        "1",
        "--max-accuracy-drop",
        "100",
        "--calib-samples",
        "128",
        "--quiet",
        "-o",
        str(out),
    ]
    run = kompakt(*args, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "vs dense-int8" in run.stdout and "report:" in run.stdout
    summary = json.loads((out / "optimize.json").read_text())
    costs = json.loads((out / "costs.json").read_text())
    # the space: the model as trained and pruned by half; the plugin's ranks on the FC layer
    assert set(costs["models"]) == {"none", "prune:ratio=0.5"}
    options = costs["models"]["none"]["layers"]["head.1"]
    assert set(options) == {"keep", "lowrank:rank=2", "lowrank:rank=4", "lowrank:rank=8"}
    assert options["keep"]["error"] == 0 and options["lowrank:rank=2"]["error"] > 0
    # the pruned model really is smaller (its FC takes half the channels)
    assert costs["models"]["prune:ratio=0.5"]["params"] < costs["models"]["none"]["params"]
    chosen = summary["rounds"][0]
    assert chosen["selection"]["precision"] in ("fp32", "int8")
    assert set(chosen["measured"]["bundles"]) == {"dense-fp32", "dense-int8", "optimized"}
    assert set(summary["versus"]) == {"dense-fp32", "dense-int8"}
    assert set(summary["prediction_miss"]) == {"1", "8"}
    for name in ("optimize.md", "pareto.png", "costs.json"):
        assert (out / name).is_file(), name
    assert "Why each layer got its choice" in (out / "optimize.md").read_text()
    # the bundle is an ordinary kompakt bundle: verify and predict run on it
    verify = kompakt("verify", summary["bundle"], env=ENV)
    assert verify.returncode == 0, verify.stderr
    from kompakt.runtime import load

    with load(summary["bundle"]) as engine:
        x = np.zeros((2, *engine.inputs[0].shape[1:]), np.float32)
        assert engine.run(x).shape == (2, 10)
