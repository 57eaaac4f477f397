"""The search over a cost table: which whole-model choice, which precision and which choice per
layer. Trials are priced from the measured tables (cheap); the optimiser is Optuna's, not ours:
an exhaustive grid (BruteForceSampler) when the space is small, TPE otherwise, seeded with the
Lagrangian picks (per layer the choice minimising latency + lambda * error, for a sweep of
lambda), which are optimal for additive costs whenever they meet the budget exactly."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from kompakt.errors import ConfigError
from kompakt.optimize.profile import CostTable
from kompakt.optimize.space import KEEP, NO_PRUNE

FLOOR = 0.05  # a prediction is never below this fraction of the whole-model choice's base
PENALTY = 1e6
SHORTLIST = 5  # added to the score of a trial that breaks a limit (Optuna minimises)


@dataclass(frozen=True)
class Limits:
    """What the chosen model must meet. `error` is the accuracy proxy's budget."""

    objective: str = "latency"  # or "size"
    error: float = math.inf
    max_bytes: float | None = None
    max_latency_s: float | None = None  # p50 at the first searched batch

    def __post_init__(self) -> None:
        if self.objective not in ("latency", "size"):
            raise ConfigError(f"objective must be 'latency' or 'size', got {self.objective!r}")


@dataclass(frozen=True)
class Selection:
    model: str
    precision: str
    layers: tuple[tuple[str, str], ...]  # (layer, choice label), sorted by layer

    @property
    def choices(self) -> dict[str, str]:
        return dict(self.layers)


def predict(table: CostTable, selection: Selection) -> dict | None:
    """Predicted seconds per batch, bytes and error of `selection`; None if a choice does not
    exist for that whole-model choice."""
    model = table.models.get(selection.model)
    if model is None or selection.precision not in model.seconds:
        return None
    p = selection.precision
    seconds = dict(model.seconds[p])
    size, error = model.bytes[p], model.error
    for name, label in selection.layers:
        options = model.layers.get(name, {})
        if label not in options:
            return None
        if label == KEEP:
            continue
        cost, keep = options[label], options[KEEP]
        for batch in seconds:
            seconds[batch] += cost.seconds[p][batch] - keep.seconds[p][batch]
        size += cost.bytes[p] - keep.bytes[p]
        error += cost.error
    # a floor: differences measured one layer at a time can sum past the base, and a near-zero
    # prediction would dominate the log objective
    seconds = {b: max(s, FLOOR * model.seconds[p][b]) for b, s in seconds.items()}
    return {"seconds": seconds, "bytes": size, "error": error}


def score(table: CostTable, predicted: dict, limits: Limits) -> float:
    """Lower is better: the mean log latency relative to the model as trained in FP32 (each
    batch counts alike), or the bytes; plus PENALTY and the size of the breach per limit
    broken."""
    base = table.models[NO_PRUNE].seconds[table.precisions[0]]
    seconds = predicted["seconds"]
    if limits.objective == "latency":
        value = sum(math.log(seconds[b] / base[b]) for b in table.batches) / len(table.batches)
    else:
        value = math.log(predicted["bytes"])
    breach = 0.0
    if predicted["error"] > limits.error:
        breach += predicted["error"] / limits.error
    if limits.max_bytes is not None and predicted["bytes"] > limits.max_bytes:
        breach += predicted["bytes"] / limits.max_bytes
    if limits.max_latency_s is not None:
        first = seconds[table.batches[0]]
        if first > limits.max_latency_s:
            breach += first / limits.max_latency_s
    return value + (PENALTY + breach if breach else 0.0)


def layer_names(table: CostTable) -> list[str]:
    return sorted({n for m in table.models.values() for n in m.layers})


def _labels(table: CostTable, name: str) -> list[str]:
    seen: dict[str, None] = {}
    for model in table.models.values():
        seen.update(dict.fromkeys(model.layers.get(name, {KEEP: None})))
    return list(seen)


def _relative_change(table: CostTable, model, cost, keep, precision: str, objective: str) -> float:
    """What a layer choice changes, relative to the whole-model choice: latency summed over the
    batches, or bytes."""
    if objective == "size":
        return (cost.bytes[precision] - keep.bytes[precision]) / max(1, model.bytes[precision])
    base = model.seconds[precision]
    return sum(
        (cost.seconds[precision][b] - keep.seconds[precision][b]) / base[b] for b in table.batches
    )


def lagrangian_picks(table: CostTable, limits: Limits, steps: int = 24) -> list[Selection]:
    """Per whole-model choice and precision, for lambda on a log sweep (and infinity), every
    layer's choice minimising its relative latency (or size) change + lambda * error: the
    points of the lower convex hull of the additive trade-off."""
    picks = []
    names = layer_names(table)
    lambdas = [10 ** (-3 + 6 * k / steps) for k in range(steps + 1)] + [1e12]
    for label, model in table.models.items():
        for precision in table.precisions:
            change = {
                (name, c): _relative_change(
                    table, model, cost, options[KEEP], precision, limits.objective
                )
                for name, options in model.layers.items()
                for c, cost in options.items()
            }
            for lam in lambdas:
                chosen = []
                for name in names:
                    options = model.layers.get(name, {KEEP: None})
                    if len(options) == 1:
                        chosen.append((name, KEEP))
                        continue
                    best = min(options, key=lambda c, n=name: change[n, c] + lam * options[c].error)
                    chosen.append((name, best))
                picks.append(Selection(label, precision, tuple(chosen)))
    return list(dict.fromkeys(picks))


def search(
    table: CostTable, limits: Limits, trials: int = 400, seed: int = 0, brute_limit: int = 4096
) -> dict:
    """The best selection under `limits` and what was tried.

    Returns:
        {"best": Selection, "predicted": predict(...), "score", "trials", "sampler",
         "front": [(Selection, predicted), ...] the non-dominated feasible trials by
         (latency at each batch, bytes, error), "shortlist": the SHORTLIST best feasible
         selections by predicted score, for `kompakt optimize` to time as whole models}.

    Raises:
        ConfigError: no trial met the limits (the message says which limit to loosen).
    """
    names = layer_names(table)
    space = _space(table, names)
    size = math.prod(len(v) for v in space.values())
    study, sampler_name = _study(size, brute_limit, trials, seed)
    if size > brute_limit:
        for pick in lagrangian_picks(table, limits):
            study.enqueue_trial(
                {"model": pick.model, "precision": pick.precision}
                | {f"layer:{n}": c for n, c in pick.layers}
            )
        trials = max(trials, len(study.get_trials(deepcopy=False)))
    else:
        trials = size
    tried: dict[Selection, tuple[float, dict]] = {}

    def objective(trial) -> float:
        selection = Selection(
            trial.suggest_categorical("model", space["model"]),
            trial.suggest_categorical("precision", space["precision"]),
            tuple((n, trial.suggest_categorical(f"layer:{n}", space[f"layer:{n}"])) for n in names),
        )
        predicted = predict(table, selection)
        if predicted is None:
            return 2 * PENALTY
        value = score(table, predicted, limits)
        tried[selection] = (value, predicted)
        return value

    study.optimize(objective, n_trials=trials, show_progress_bar=False)
    feasible = {s: v for s, v in tried.items() if v[0] < PENALTY}
    if not feasible:
        raise ConfigError(_no_feasible_message(tried, limits))
    best = min(feasible, key=lambda s: feasible[s][0])
    return {
        "best": best,
        "predicted": feasible[best][1],
        "score": feasible[best][0],
        "trials": len(tried),
        "space": size,
        "sampler": sampler_name,
        "front": pareto_front([(s, v[1]) for s, v in feasible.items()]),
        "shortlist": sorted(feasible, key=lambda s: feasible[s][0])[:SHORTLIST],
    }


def _space(table: CostTable, names: list[str]) -> dict[str, list[str]]:
    """Optuna's categorical parameters: the whole-model choice, the precision, each layer."""
    layers = {f"layer:{n}": _labels(table, n) for n in names}
    return {"model": list(table.models), "precision": list(table.precisions), **layers}


def _study(size: int, brute_limit: int, trials: int, seed: int):
    """An Optuna study: exhaustive when the space has at most `brute_limit` points, else TPE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if size <= brute_limit:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.1, still there in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.BruteForceSampler(seed=seed)
        name = "exhaustive (optuna BruteForceSampler)"
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
        name = f"optuna TPESampler ({trials} trials, Lagrangian seeds)"
    return optuna.create_study(direction="minimize", sampler=sampler), name


def _no_feasible_message(tried: dict, limits: Limits) -> str:
    least = min((v[1]["error"] for v in tried.values()), default=math.nan)
    smallest = min((v[1]["bytes"] for v in tried.values()), default=math.nan)
    parts = [f"no choice met the limits (least predicted error {least:.3f} vs budget "]
    parts.append(f"{limits.error:.3f}; smallest {smallest / 1024:,.0f} KiB")
    if limits.max_bytes is not None:
        parts.append(f" vs --max-size-kib {limits.max_bytes / 1024:,.0f}")
    parts.append("); loosen --max-size-kib / --max-latency-ms or allow a larger accuracy drop")
    return "".join(parts)


def pareto_front(points: list[tuple[Selection, dict]]) -> list[tuple[Selection, dict]]:
    """The points no other point beats on every axis (each batch's latency, bytes, error),
    sorted by the first batch's latency."""
    import numpy as np

    if not points:
        return []
    axes = np.array(
        [
            [*(p["seconds"][b] for b in sorted(p["seconds"])), p["bytes"], p["error"]]
            for _, p in points
        ]
    )
    keep = [
        i for i, row in enumerate(axes) if not ((axes <= row).all(1) & (axes < row).any(1)).any()
    ]
    keep.sort(key=lambda i: tuple(axes[i]))
    return [points[i] for i in keep]
