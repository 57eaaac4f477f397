"""optimize.json (the source of truth), optimize.md and pareto.png, rendered from the summary."""

from __future__ import annotations

import json
from pathlib import Path

from kompakt._io import atomic_write_text


def write_report(summary: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "optimize.json", json.dumps(summary, indent=1, default=str) + "\n")
    costs_path = folder / summary["costs"]
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else None
    atomic_write_text(folder / "optimize.md", render_markdown(summary, costs))
    plot(summary, folder / "pareto.png")


def _fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else f"{value:{spec}}"


def render_markdown(summary: dict, costs: dict | None) -> str:
    chosen = next(r for r in summary["rounds"] if r["round"] == summary["chosen_round"])
    machine = summary["machine"]
    batches = list(chosen["predicted"]["ms"])
    lines = [
        "# kompakt optimize",
        "",
        f"Checkpoint `{summary['checkpoint']}`, objective **{summary['config']['objective']}**, "
        f"backend {summary['config']['backend']}, accuracy limit "
        f"{summary['config']['max_accuracy_drop']} points. Machine: {machine.get('cpu')}, "
        f"{machine.get('cores')} cores.",
        "",
        f"Chosen: round {chosen['round']} — `{summary['bundle']}`"
        + ("" if summary["within_accuracy_limit"] else " (**no round met the accuracy limit**)"),
        "",
        "## Measured side by side (one interleaved bench)",
        "",
        "| bundle | precision | "
        + " | ".join(f"p50 b{b} ms" for b in batches)
        + " | file KiB | top-1 % |",
        "|---|---|" + "---|" * len(batches) + "---|---|",
    ]
    for name, row in chosen["measured"]["bundles"].items():
        lat = " | ".join(_fmt(row["p50_ms"].get(b)) for b in batches)
        top1 = _fmt(100 * row["top1"], ".2f") if row["top1"] is not None else "–"
        lines.append(
            f"| {name} | {row['precision']} | {lat} | {row['artefact_kib']:,.1f} | {top1} |"
        )
    lines += ["", "| vs | " + " | ".join(f"speed-up b{b}" for b in batches)]
    lines[-1] += " | smaller file | top-1 change (points) |"
    lines.append("|---|" + "---|" * len(batches) + "---|---|")
    for name, row in summary["versus"].items():
        speed = " | ".join(f"{_fmt(row['speedup'].get(b), '.2f')}x" for b in batches)
        lines.append(
            f"| {name} | {speed} | {row['smaller_file']:.1f}x | "
            f"{_fmt(row['top1_change_points'], '+.2f')} |"
        )
    lines += [
        "",
        "## Predicted vs measured (chosen bundle)",
        "",
        "Additive: the cost tables' base plus each layer's measured difference. Whole model: "
        "the search's shortlist timed as whole models before building (what chose the bundle). "
        "Measured: the deployed bundle in the bench above.",
        "",
        "| batch | additive ms | whole model ms | measured ms | additive miss | whole-model miss |",
        "|---|---|---|---|---|---|",
    ]
    measured = chosen["measured"]["bundles"]["optimized"]["p50_ms"]
    for b in batches:
        miss, timed = summary["prediction_miss"].get(b), summary["timed_miss"].get(b)
        lines.append(
            f"| {b} | {_fmt(chosen['predicted']['ms'][b])} | {_fmt(chosen['timed_ms'].get(b))} "
            f"| {_fmt(measured.get(b))} | {_fmt(100 * miss if miss is not None else None, '+.1f')}"
            f" % | {_fmt(100 * timed if timed is not None else None, '+.1f')} % |"
        )
    lines += _rounds(summary)
    if costs:
        lines += _why(chosen, costs)
    return "\n".join(lines) + "\n"


def _rounds(summary: dict) -> list[str]:
    lines = [
        "",
        "## Rounds",
        "",
        "| round | proxy budget | whole model | precision | predicted error | measured drop "
        "(points) | search |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rounds"]:
        sel = r["selection"]
        lines.append(
            f"| {r['round']} | {r['budget']:.3f} | {sel['model']} | {sel['precision']} | "
            f"{r['predicted']['error']:.3f} | {_fmt(r['measured']['drop_points'], '.2f')} | "
            f"{r['search']['sampler']}, {r['search']['trials']} of {r['search']['space']:,} |"
        )
    return lines


def _why(chosen: dict, costs: dict) -> list[str]:
    """Per layer: every option's measured time difference and error, the chosen one marked."""
    sel = chosen["selection"]
    model = costs["models"][sel["model"]]
    precision, batches = sel["precision"], [str(b) for b in costs["batches"]]
    lines = [
        "",
        f"## Why each layer got its choice ({sel['model']}, {precision})",
        "",
        "Each option: the whole model with only this layer changed, timed on this machine side by "
        "side with the model as it is (Δ ms per batch), the change of its file size, and its "
        "accuracy proxy (added output error after fitting).",
        "",
    ]
    for name, options in model["layers"].items():
        keep = options["keep"]
        lines += [f"### {name}", "", "| option | " + " | ".join(f"Δ ms b{b}" for b in batches)]
        lines[-1] += " | Δ KiB | error |"
        lines.append("|---|" + "---|" * len(batches) + "---|---|")
        for label, cost in options.items():
            mark = " **(chosen)**" if sel["layers"].get(name) == label else ""
            deltas = " | ".join(
                f"{cost['ms'][precision][b] - keep['ms'][precision][b]:+.4f}" for b in batches
            )
            lines.append(
                f"| {label}{mark} | {deltas} | {cost['bytes'][precision] / 1024:+,.1f} | "
                f"{cost['error']:.4f} |"
            )
        lines.append("")
    return lines


def plot(summary: dict, path: Path) -> bool:
    """pareto.png: top-1 vs p50 latency per batch (one panel each), marker area = file size;
    the dense baselines, every round's bundle, the chosen one starred, the front drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    first = summary["rounds"][0]["measured"]["bundles"]
    points = [(name, row, False) for name, row in first.items() if name != "optimized"]
    for r in summary["rounds"]:
        row = r["measured"]["bundles"]["optimized"]
        points.append((f"round {r['round']}", row, r["round"] == summary["chosen_round"]))
    batches = list(first["optimized"]["p50_ms"])
    # one panel per batch, stacked: each panel's key sits to its right
    fig, axes = plt.subplots(len(batches), 1, figsize=(7, 4.5 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches, strict=True):
        _panel(ax, points, batch)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _panel(ax, points: list[tuple[str, dict, bool]], batch: str) -> None:
    from kompakt.plotting import numbered_labels, spread_axis

    largest = max(row["artefact_kib"] for _, row, _ in points)
    xy, keys = [], []
    for label, row, chosen in points:
        x, y = row["p50_ms"].get(batch), 100 * (row["top1"] or 0)
        if x is None:
            continue
        xy.append((x, y))
        dense = label.startswith("dense")
        ax.scatter(
            x,
            y,
            s=40 + 400 * (row["artefact_kib"] / largest) ** 0.5,
            marker="*" if chosen else ("s" if dense else "o"),
            alpha=0.7,
            color="C3" if chosen else ("C0" if dense else "C2"),
        )
        keys.append(
            f"{label} ({row['precision']})  {row['artefact_kib']:,.0f} KiB  {x:.3g} ms  {y:.2f} %"
        )
    best, line = -1.0, []
    for x, y in sorted(xy):  # the front: each point more accurate than every faster one
        if y > best:
            line.append((x, y))
            best = y
    if len(line) > 1:
        ax.step(*zip(*line, strict=True), where="post", ls="--", color="grey", lw=1)
    ax.set(
        xlabel=f"p50 latency at batch {batch} (ms)",
        ylabel="top-1 accuracy (%)",
        title=f"batch {batch}: measured bundles (star = chosen, area = file size)",
    )
    ax.margins(0.2)
    ax.grid(True, alpha=0.3)
    spread_axis(ax, [x for x, _ in xy])
    numbered_labels(ax, xy, keys, title="bundle, file, p50, top-1")
