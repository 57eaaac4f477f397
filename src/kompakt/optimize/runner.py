"""`kompakt optimize`: a trained checkpoint -> the bundle that is fastest (or smallest) on this
target within an accuracy limit, proven against the dense baselines in one measured run.

Stages, each its own function: load -> profile (cost tables measured here) -> rounds of
(search -> build -> fine-tune -> export -> deploy -> measure), each round with half the
accuracy-proxy budget of the one before while the measured drop is too large -> report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from kompakt._io import atomic_write_text
from kompakt.errors import ConfigError
from kompakt.machine import describe_machine
from kompakt.models import load_checkpoint, model_from_checkpoint
from kompakt.optimize import build
from kompakt.optimize.config import OptimizeConfig
from kompakt.optimize.profile import CostTable, ProfileSettings, profile
from kompakt.optimize.report import write_report
from kompakt.optimize.search import Limits, search
from kompakt.optimize.space import model_choices
from kompakt.runtime.backends import require


def optimize(ckpt: str | Path, config: OptimizeConfig | None = None) -> dict:
    """Search, build and measure; returns the summary also written to OUT/optimize.json.

    Raises:
        ConfigError: bad options, a checkpoint without its dataset, no choice within limits.
    """
    config = config or OptimizeConfig()
    require("optuna", "optimize", "kompakt optimize")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    saved, model, data, calib, held_out = load_inputs(str(ckpt), config)
    table = measure_costs(model, calib, held_out, config)
    atomic_write_text(out / "costs.json", json.dumps(table.to_json(), indent=1))
    baselines = build.dense_bundles(
        str(ckpt), out / "baselines", config.backend, config.precisions, config.threads
    )
    rounds = []
    budget = config.error_budget
    for index in range(1, config.rounds + 1):
        attempt = run_round(index, saved, str(ckpt), table, budget, calib, data, config)
        attempt["measured"] = measure_bundles(baselines, attempt, data, config)
        rounds.append(attempt)
        drop = attempt["measured"]["drop_points"]
        if drop is not None and drop <= config.max_accuracy_drop:
            break
        budget = next_budget(attempt["predicted"]["error"], drop, config.max_accuracy_drop)
    summary = summarise(str(ckpt), config, table, baselines, rounds)
    write_report(summary, out)
    return summary


def next_budget(predicted_error: float, drop: float | None, max_drop: float) -> float:
    """The proxy budget after a round that lost `drop` points at `predicted_error`: the error
    scaled by how far the drop overshot (the proxy calibrated on this real fine-tune), with a
    10 % margin, and always at most 90 % of what was just tried."""
    if not drop or drop <= 0:
        return predicted_error * 0.5
    return predicted_error * min(0.9, 0.9 * max_drop / drop)


def load_inputs(ckpt: str, config: OptimizeConfig):
    """(checkpoint, model, dataset name, calibration inputs, held-out inputs)."""
    from kompakt.data import load_dataset

    saved = load_checkpoint(ckpt)
    data = config.data or saved.get("data", {}).get("name")
    if not data:
        raise ConfigError(f"{ckpt} does not name its dataset; pass --data")
    splits = load_dataset(data, root=config.data_root or saved.get("data", {}).get("root"))
    if splits.info.task != "classification":
        raise ConfigError("kompakt optimize needs a classification model (it limits top-1 drop)")
    x_train, _ = splits.split("train")
    x_val, _ = splits.split("val")
    model = model_from_checkpoint(saved).eval()
    return saved, model, data, x_train[: config.calib_samples], x_val[:256]


def measure_costs(model, calib, held_out, config: OptimizeConfig) -> CostTable:
    settings = ProfileSettings(
        batches=config.batches,
        precisions=config.precisions,
        threads=config.threads,
        methods=config.methods,
        quiet=config.quiet,
    )
    choices = model_choices(model, config.methods, config.prune_ratios)
    return profile(model, choices, calib, held_out, settings)


def limits_for(config: OptimizeConfig, budget: float) -> Limits:
    return Limits(
        objective=config.objective,
        error=budget,
        max_bytes=config.max_size_kib * 1024 if config.max_size_kib else None,
        max_latency_s=config.max_latency_ms / 1e3 if config.max_latency_ms else None,
    )


def run_round(index, saved, ckpt, table, budget, calib, data, config: OptimizeConfig) -> dict:
    """Search under `budget`, then build, fine-tune, export and deploy the choice."""
    found = search(table, limits_for(config, budget), trials=config.trials, seed=config.seed)
    selection = found["best"]
    folder = Path(config.out) / f"round{index}"
    folder.mkdir(parents=True, exist_ok=True)
    built = build.build_checkpoint(saved, table, selection, calib, folder / "built.pt")
    best = build.finetune(
        folder / "built.pt",
        ckpt,
        data,
        config.data_root,
        config.finetune_epochs,
        folder / "finetune",
        config.seed,
        config.quiet,
    )
    build.export_with_forms(best, built["forms"], folder / "model.onnx")
    bundle = build.deploy(
        folder / "model.onnx",
        folder / f"optimized-{selection.precision}",
        config.backend,
        selection.precision,
        best,
        config.threads,
    )
    return {
        "round": index,
        "budget": budget,
        "selection": asdict(selection) | {"layers": selection.choices},
        "predicted": _jsonable_prediction(found["predicted"]),
        "search": {k: found[k] for k in ("trials", "space", "sampler")},
        "front": [
            {"selection": s.choices, "model": s.model, "precision": s.precision}
            | _jsonable_prediction(p)
            for s, p in found["front"][:40]
        ],
        "compressed_layers": built["layers"],
        "forms": built["forms"],
        "checkpoint": str(best),
        "bundle": str(bundle),
    }


def _jsonable_prediction(predicted: dict) -> dict:
    return {
        "ms": {str(b): round(s * 1e3, 4) for b, s in predicted["seconds"].items()},
        "kib": round(predicted["bytes"] / 1024, 1),
        "error": round(predicted["error"], 4),
    }


def measure_bundles(baselines: dict, attempt: dict, data: str, config: OptimizeConfig) -> dict:
    """Bench the dense baselines and this round's bundle side by side (interleaved), on the
    test split; the drop is against the dense bundle of the same precision."""
    from kompakt.runtime_bench.bench import run

    paths = {f"dense-{p}": path for p, path in baselines.items()}
    paths["optimized"] = Path(attempt["bundle"])
    results = run(
        list(paths.values()),
        batches=config.batches,
        warmup_s=0.5,
        min_runs=50,
        duration_s=2.0,
        threads=config.threads,
        data=data,
        data_root=config.data_root,
        quiet=config.quiet,
        report=str(Path(config.out) / f"round{attempt['round']}" / "bench"),
    )
    rows = {}
    for name, entry in zip(paths, results["bundles"], strict=True):
        rows[name] = {
            "precision": entry["precision"],
            "p50_ms": {str(b): s["p50_ms"] for b, s in entry["latency"].items()},
            "artefact_kib": round(entry["artefact_bytes"] / 1024, 1),
            "top1": (entry.get("accuracy") or {}).get("top1"),
        }
    mine = rows["optimized"]
    reference = rows.get(f"dense-{mine['precision']}") or rows["dense-fp32"]
    drop = None
    if mine["top1"] is not None and reference["top1"] is not None:
        drop = round(100 * (reference["top1"] - mine["top1"]), 2)
    return {"bundles": rows, "drop_points": drop, "machine": results["machine"]}


def summarise(ckpt, config: OptimizeConfig, table, baselines, rounds: list[dict]) -> dict:
    """The summary: every round, the chosen one (the last round, or the best within the
    accuracy limit), speed-ups against each dense baseline, predicted vs measured latency."""
    within = [r for r in rounds if (r["measured"]["drop_points"] or 0) <= config.max_accuracy_drop]
    chosen = within[-1] if within else rounds[-1]
    bundles = chosen["measured"]["bundles"]
    mine = bundles["optimized"]
    versus = {}
    for name, row in bundles.items():
        if name == "optimized":
            continue
        versus[name] = {
            "speedup": {b: round(row["p50_ms"][b] / t, 3) for b, t in mine["p50_ms"].items() if t},
            "smaller_file": round(row["artefact_kib"] / mine["artefact_kib"], 2),
            "top1_change_points": (
                round(100 * (mine["top1"] - row["top1"]), 2)
                if mine["top1"] is not None and row["top1"] is not None
                else None
            ),
        }
    predicted = chosen["predicted"]["ms"]
    miss = {
        b: round(mine["p50_ms"][b] / predicted[b] - 1, 3)
        for b in predicted
        if b in mine["p50_ms"] and predicted[b]
    }
    return {
        "schema": "kompakt-optimize/1",
        "checkpoint": ckpt,
        "config": {k: v for k, v in asdict(config).items()},
        "machine": describe_machine(),
        "costs": "costs.json",
        "rounds": rounds,
        "chosen_round": chosen["round"],
        "within_accuracy_limit": bool(within),
        "bundle": chosen["bundle"],
        "versus": versus,
        "prediction_miss": miss,
        "prediction_miss_max": max((abs(v) for v in miss.values()), default=math.nan),
        "baselines": {p: str(path) for p, path in baselines.items()},
        "predict": "base + sum of per-layer differences, timed alone (see costs.json)",
    }
