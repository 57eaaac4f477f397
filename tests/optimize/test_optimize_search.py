"""The search on cost tables with a known best answer, the prediction it prices trials with,
and the search space read from the registry (a plugin joins by registering)."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from torch import nn

from kompakt.errors import ConfigError, KompaktError
from kompakt.optimize.profile import CostTable, LayerCost, ModelCost
from kompakt.optimize.search import Limits, Selection, lagrangian_picks, predict, search
from kompakt.optimize.space import KEEP, NO_PRUNE, ModelChoice, layer_configs, model_choices

BATCHES = (1, 32)


def _cost(ms1: float, ms32: float, kib: float, error: float = 0.0) -> LayerCost:
    seconds = {p: {1: ms1 * f / 1e3, 32: ms32 * f / 1e3} for p, f in (("fp32", 1.0), ("int8", 0.5))}
    return LayerCost(seconds, {"fp32": int(kib * 1024), "int8": int(kib * 256)}, error)


def _table() -> CostTable:
    """Two whole-model choices, two layers with three options each. Under an error budget of
    0.13 the fastest legal pick is: pruned (0.10) + fc1 tt8 (0.02) + fc2 keep, in INT8."""

    def layers():
        return {
            "fc1": {
                KEEP: _cost(4.0, 40.0, 1000),
                "tt:ranks=4": _cost(1.0, 10.0, 10, error=0.05),
                "tt:ranks=8": _cost(1.5, 15.0, 20, error=0.02),
            },
            "fc2": {
                KEEP: _cost(1.0, 10.0, 100),
                "tt:ranks=4": _cost(0.8, 8.0, 5, error=0.04),
                "meta:groups=4": _cost(1.2, 12.0, 30, error=0.01),  # slower: never chosen
            },
        }

    models = {
        NO_PRUNE: ModelCost(
            ModelChoice(NO_PRUNE),
            _cost(10.0, 100.0, 1200).seconds,
            _cost(0, 0, 1200).bytes,
            0.0,
            1,
        ),
        "prune:ratio=0.5": ModelCost(
            ModelChoice("prune:ratio=0.5"),
            _cost(7.0, 60.0, 1150).seconds,
            _cost(0, 0, 1150).bytes,
            0.10,
            1,
        ),
    }
    for model in models.values():
        model.layers = layers()
    return CostTable(BATCHES, ("fp32", "int8"), models)


def _brute_force(table: CostTable, limits: Limits) -> Selection:
    """Every combination priced by hand (the answer the test knows)."""
    from kompakt.optimize.search import score

    best, best_score = None, math.inf
    for model, precision in itertools.product(table.models, table.precisions):
        layers = table.models[model].layers
        for combo in itertools.product(*(list(layers[n]) for n in sorted(layers))):
            selection = Selection(model, precision, tuple(zip(sorted(layers), combo, strict=True)))
            value = score(table, predict(table, selection), limits)
            if value < best_score:
                best, best_score = selection, value
    return best


def test_prediction_is_the_base_plus_the_layers_differences():
    table = _table()
    got = predict(
        table, Selection("prune:ratio=0.5", "int8", (("fc1", "tt:ranks=8"), ("fc2", KEEP)))
    )
    # 7 ms * 0.5 (int8) + (1.5 - 4) * 0.5
    assert got["seconds"][1] == pytest.approx((3.5 - 1.25) / 1e3)
    assert got["seconds"][32] == pytest.approx((30.0 - 12.5) / 1e3)
    assert got["error"] == pytest.approx(0.12)
    assert got["bytes"] == (1150 * 256) + (20 * 256) - (1000 * 256)
    assert predict(table, Selection(NO_PRUNE, "int8", (("fc1", "tt:ranks=99"),))) is None


@pytest.mark.parametrize("brute_limit", [10_000, 0], ids=["exhaustive", "tpe+lagrangian"])
def test_search_finds_the_known_best_under_the_budget(brute_limit):
    table = _table()
    limits = Limits(error=0.13)
    found = search(table, limits, trials=60, brute_limit=brute_limit)
    expected = Selection("prune:ratio=0.5", "int8", (("fc1", "tt:ranks=8"), ("fc2", KEEP)))
    assert found["best"] == expected == _brute_force(table, limits)
    assert found["predicted"]["error"] <= 0.13
    # a looser budget buys the faster rank-4 layers; a budget below the pruning's own error
    # keeps the model unpruned
    assert search(table, Limits(error=1.0), brute_limit=brute_limit)["best"].choices == {
        "fc1": "tt:ranks=4",
        "fc2": "tt:ranks=4",
    }
    assert search(table, Limits(error=0.05), brute_limit=brute_limit)["best"].model == NO_PRUNE


def test_size_objective_and_limits_that_nothing_meets():
    table = _table()
    smallest = search(table, Limits(objective="size", error=1.0, max_latency_s=1.0))["best"]
    assert smallest.precision == "int8" and smallest.choices["fc1"] == "tt:ranks=4"
    with pytest.raises(ConfigError, match="no choice met the limits"):
        search(table, Limits(error=1.0, max_bytes=1024))


def test_lagrangian_picks_include_the_extremes():
    picks = lagrangian_picks(_table(), Limits())
    layer_sets = {p.layers for p in picks}
    assert (("fc1", KEEP), ("fc2", KEEP)) in layer_sets or (
        ("fc1", "tt:ranks=8"),
        ("fc2", "meta:groups=4"),
    ) in layer_sets  # the least-error end
    assert (("fc1", "tt:ranks=4"), ("fc2", "tt:ranks=4")) in layer_sets  # the fastest end


def test_the_space_comes_from_the_registry_and_a_plugin_joins_it():
    net = nn.Sequential(
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 256)
    )
    configs = layer_configs(net, None)
    kinds = {type(c).__name__ for c in configs["3"]}
    assert kinds == {"TTConfig", "MetaHeadConfig"}
    assert {type(c).__name__ for c in configs["0"]} == {"TTConfig"}  # convs get TT only
    assert [c.label for c in model_choices(net, None)] == [
        NO_PRUNE,
        "prune:ratio=0.25",
        "prune:ratio=0.5",
    ]
    toy = importlib.import_module("toy_plugin")
    toy.register()
    try:
        kinds = {type(c).__name__ for c in layer_configs(net, None)["3"]}
        assert "LowRankConfig" in kinds
        assert {type(c).__name__ for c in layer_configs(net, ("lowrank",))["3"]} == {
            "LowRankConfig"
        }
    finally:
        toy.unregister()
    with pytest.raises(KompaktError, match="unknown compression"):
        layer_configs(net, ("nope",))
    assert torch.is_tensor(net[0].weight)


def test_the_next_round_budget_follows_the_measured_drop():
    from kompakt.optimize.runner import next_budget

    # over the limit: less error, in proportion to the overshoot, always real progress
    assert next_budget(0.35, 0.53, 0.5) == pytest.approx(0.35 * 0.9 * 0.5 / 0.53)
    assert next_budget(0.35, 5.0, 0.5) == pytest.approx(0.35 * 0.09)
    assert next_budget(0.35, 0.51, 0.5) <= 0.9 * 0.35
    # well within: more error allowed (at most 3x); no loss at all: 3x
    assert next_budget(0.2, 0.15, 0.5) == pytest.approx(0.2 * 3.0)
    assert next_budget(0.2, 0.3, 0.5) == pytest.approx(0.2 * 1.5)
    assert next_budget(0.2, 0.0, 0.5) == pytest.approx(0.6)


def test_once_rounds_bracket_the_limit_the_budget_bisects():
    from kompakt.optimize.runner import bracketed

    def round_(error, drop):
        return {"predicted": {"error": error}, "measured": {"drop_points": drop}}

    assert bracketed([round_(0.4, 0.27)], 0.5) is None  # nothing over the limit yet
    assert bracketed([round_(0.4, 0.27), round_(0.64, 0.67)], 0.5) == pytest.approx(0.52)
    # a noisy pair (more error held than broke) is no bracket
    assert bracketed([round_(0.6, 0.27), round_(0.4, 0.67)], 0.5) is None


def test_burst_timing_runs_each_call_in_bursts_round_after_round():
    from kompakt.timing import burst_medians

    order: list[str] = []
    calls = {k: (lambda k=k: order.append(k)) for k in "ab"}
    medians = burst_medians(calls, rounds=2, burst=3, warmup=1)
    assert order == list("aaaabbbbaaaabbbb") and set(medians) == {"a", "b"}
