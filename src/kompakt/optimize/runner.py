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
from kompakt.optimize.profile import CostTable, ProfileSettings, profile, time_selections
from kompakt.optimize.report import write_report
from kompakt.optimize.search import Limits, predict, score, search
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
    rounds: list[dict] = []
    budget = config.error_budget
    for index in range(1, config.rounds + 1):
        found = search(table, limits_for(config, budget), trials=config.trials, seed=config.seed)
        found = choose_measured(model, table, found, calib, config)
        if any(
            r["selection"]["layers"] == found["best"].choices
            and r["selection"]["model"] == found["best"].model
            and r["selection"]["precision"] == found["best"].precision
            for r in rounds
        ):
            break  # the new budget changed nothing: measuring it again would tell nothing new
        attempt = run_round(index, saved, str(ckpt), table, found, budget, calib, data, config)
        attempt["measured"] = measure_bundles(baselines, attempt, data, config)
        rounds.append(attempt)
        drop = attempt["measured"]["drop_points"]
        within = drop is not None and drop <= config.max_accuracy_drop
        budget = next_budget(attempt["predicted"]["error"], drop, config.max_accuracy_drop)
        budget = bracketed(rounds, config.max_accuracy_drop) or budget
        if within and budget < 1.2 * max(attempt["predicted"]["error"], 1e-3):
            break  # within the limit and too close to it to gain from a larger budget
    summary = summarise(str(ckpt), config, table, baselines, rounds)
    write_report(summary, out)
    return summary


def next_budget(predicted_error: float, drop: float | None, max_drop: float) -> float:
    """The proxy budget after a round that lost `drop` points at `predicted_error` (the proxy
    calibrated on that real fine-tune): the error scaled by max_drop / drop with a 10 % margin,
    so a round over the limit asks for less (always at most 90 % of what it tried) and a round
    well within it may ask for up to 3x more (the proxy, measured before fine-tuning, is
    pessimistic for methods that fine-tuning repairs well, such as pruning)."""
    base = max(predicted_error, 1e-3)
    factor = 3.0 if not drop or drop <= 0 else min(3.0, 0.9 * max_drop / drop)
    if drop is not None and drop > max_drop:
        factor = min(factor, 0.9)
    return base * factor


def bracketed(rounds: list[dict], max_drop: float) -> float | None:
    """Once one round was within the accuracy limit and another over it, the budget halfway
    between the largest proxy error that held and the smallest that did not (bisection on the
    measured fine-tunes); None until both exist."""
    held = [r["predicted"]["error"] for r in rounds if _within(r, max_drop)]
    broke = [r["predicted"]["error"] for r in rounds if not _within(r, max_drop)]
    if not held or not broke or max(held) >= min(broke):
        return None
    return (max(held) + min(broke)) / 2


def _within(attempt: dict, max_drop: float) -> bool:
    drop = attempt["measured"]["drop_points"]
    return drop is not None and drop <= max_drop


def measured_score(attempt: dict, objective: str) -> float:
    """Lower is better: the mean log p50 ratio against the fastest dense baseline of the same
    bench run (latency), or the file size."""
    bundles = attempt["measured"]["bundles"]
    mine = bundles["optimized"]
    if objective == "size":
        return mine["artefact_kib"]
    reference = bundles.get("dense-int8") or bundles["dense-fp32"]
    logs = [math.log(t / reference["p50_ms"][b]) for b, t in mine["p50_ms"].items() if t]
    return sum(logs) / max(1, len(logs))


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


def profile_settings(config: OptimizeConfig) -> ProfileSettings:
    return ProfileSettings(
        batches=config.batches,
        precisions=config.precisions,
        threads=config.threads,
        methods=config.methods,
        quiet=config.quiet,
    )


def measure_costs(model, calib, held_out, config: OptimizeConfig) -> CostTable:
    choices = model_choices(model, config.methods, config.prune_ratios)
    return profile(model, choices, calib, held_out, profile_settings(config))


def choose_measured(model, table: CostTable, found: dict, calib, config: OptimizeConfig) -> dict:
    """Time the search's shortlist as whole models and take the best *measured* one: the
    additive prediction ranks, the measurement decides (and says how far the prediction was).
    Returns `found` with "best", "predicted" (additive), "timed" (measured seconds) and
    "shortlist_ms" set."""
    shortlist = found["shortlist"]
    timed = time_selections(model, table, shortlist, calib, profile_settings(config))
    limits = limits_for(config, math.inf)
    predicted = [predict(table, selection) for selection in shortlist]  # priced once
    scores = [
        score(table, {**p, "seconds": seconds}, limits)
        for p, seconds in zip(predicted, timed, strict=True)
    ]
    best = min(range(len(shortlist)), key=scores.__getitem__)
    return {
        **found,
        "best": shortlist[best],
        "predicted": predicted[best],
        "timed": timed[best],
        "shortlist_ms": [
            {
                "selection": s.choices,
                "model": s.model,
                "precision": s.precision,
                "predicted_ms": {str(b): round(v * 1e3, 4) for b, v in p["seconds"].items()},
                "timed_ms": {str(b): round(v * 1e3, 4) for b, v in t.items()},
            }
            for s, p, t in zip(shortlist, predicted, timed, strict=True)
        ],
    }


def limits_for(config: OptimizeConfig, budget: float) -> Limits:
    return Limits(
        objective=config.objective,
        error=budget,
        max_bytes=config.max_size_kib * 1024 if config.max_size_kib else None,
        max_latency_s=config.max_latency_ms / 1e3 if config.max_latency_ms else None,
    )


def run_round(index, saved, ckpt, table, found, budget, calib, data, config) -> dict:
    """Build, fine-tune, export and deploy what the search `found` under `budget`."""
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
        "timed_ms": {str(b): round(t * 1e3, 4) for b, t in found["timed"].items()},
        "shortlist": found["shortlist_ms"],
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
    """The summary: every round, the chosen one (the best measured within the accuracy limit,
    else the last), speed-ups against each dense baseline, predicted vs measured latency."""
    within = [r for r in rounds if (r["measured"]["drop_points"] or 0) <= config.max_accuracy_drop]
    # the best measured round within the accuracy limit, else the last (the closest to it)
    chosen = (
        min(within, key=lambda r: measured_score(r, config.objective)) if within else rounds[-1]
    )
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

    def miss(predicted: dict) -> dict:
        return {
            b: round(mine["p50_ms"][b] / predicted[b] - 1, 3)
            for b in predicted
            if b in mine["p50_ms"] and predicted[b]
        }

    return {
        "schema": "kompakt-optimize/1",
        "checkpoint": ckpt,
        "config": asdict(config),
        "machine": describe_machine(),
        "costs": "costs.json",
        "rounds": rounds,
        "chosen_round": chosen["round"],
        "within_accuracy_limit": bool(within),
        "bundle": chosen["bundle"],
        "versus": versus,
        # the bundle's measured p50 against the additive prediction (base + per-layer
        # differences) and against the whole-model timing before the build (what chose it)
        "prediction_miss": miss(chosen["predicted"]["ms"]),
        "timed_miss": miss(chosen["timed_ms"]),
        "baselines": {p: str(path) for p, path in baselines.items()},
        "predict": "base + sum of per-layer differences, timed alone (see costs.json)",
    }
