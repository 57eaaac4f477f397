"""Renderings of bench results (JSON is the source of truth): report.md, results.csv, PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from kompakt._io import atomic_write_text
from kompakt.runtime_bench.metrics import measured


def _rows(results: dict) -> list[dict]:
    rows = []
    for b in results["bundles"]:
        for batch, stats in b["latency"].items():
            accuracy = b.get("accuracy") or {}
            rows.append(
                {
                    "bundle": b["name"],
                    "backend": b["backend"],
                    "precision": b["precision"],
                    "batch": int(batch),
                    "p50_ms": stats["p50_ms"],
                    "p90_ms": stats["p90_ms"],
                    "p99_ms": stats["p99_ms"],
                    "mean_ms": stats["mean_ms"],
                    "std_ms": stats["std_ms"],
                    "throughput_per_s": stats["throughput_per_s"],
                    "cv": stats["cv"],
                    "runs": stats["runs"],
                    "artefact_kib": b["artefact_bytes"] / 1024,
                    "peak_rss_mib": b.get("peak_rss_mib"),
                    "top1": accuracy.get("top1"),
                    "speedup_vs_first": b["vs_baseline"].get(f"p50_speedup_b{batch}"),
                    **{f"metric_{k}": v for k, v in (b.get("metrics") or {}).items()},
                }
            )
    return rows


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# kompakt bench report",
        "",
        f"{results['date']} · kompakt {results['kompakt_version']} · {m['cpu']}, {m['cores']} "
        f"cores, {m.get('memory_gib')} GiB, {m['os']}, Python {m['python']}",
        f"Packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items() if v)}",
        "",
        f"Settings: {results['settings']}. " + (results.get("gpu_note") or ""),
        "",
    ]
    metrics = measured(results["bundles"])
    heads = [f"{m.label} {m.unit}".strip() for m in metrics]
    lines.append("| bundle | backend | precision | " + " | ".join(heads) + " |")
    lines.append("|---|---|---|" + "---|" * len(metrics))
    for b in results["bundles"]:
        values = b.get("metrics") or {}
        cells = [m.format(values.get(m.name)) for m in metrics]
        lines.append(
            f"| {b['name']} | {b['backend']} | {b['precision']} | " + " | ".join(cells) + " |"
        )
    for b in results["bundles"]:
        golden = b.get("golden")
        if golden:
            verdict = "ok" if golden.get("ok") else "DRIFT"
            lines.append(
                f"\nGolden samples of {b['name']}: {verdict} (max rel "
                f"{golden.get('max_rel', float('nan')):.2e}, top-1 agreement "
                f"{golden.get('top1_agreement', float('nan')):.4f})"
            )
    lines += [
        "",
        "## Latency (ms) and throughput; ratios vs the first bundle",
        "",
        "| bundle | batch | p50 | p90 | p99 | mean ± std | samples/s | p50 speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(results):
        lines.append(
            f"| {r['bundle']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['mean_ms']:.3f} ± {r['std_ms']:.3f} | "
            f"{r['throughput_per_s']:.0f} | {_fmt(r['speedup_vs_first'], 2)}x |"
        )
    warnings = [f"- {b['name']}: {w}" for b in results["bundles"] for w in b["warnings"]]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    lines += ["", "Plots: latency_vs_batch.png, pareto.png. Source of truth: results.json.", ""]
    return "\n".join(lines)


def write_csv(results: dict, path: Path) -> None:
    rows = _rows(results)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["bundle"])
        writer.writeheader()
        writer.writerows(rows)


def plot(results: dict, folder: Path) -> list[str]:
    """latency_vs_batch.png and pareto.png (accuracy vs latency, bubble area = file size)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for b in results["bundles"]:
        batches = sorted(int(k) for k in b["latency"])
        ax.plot(
            batches, [b["latency"][str(k)]["p50_ms"] for k in batches], marker="o", label=b["name"]
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch",
        ylabel="p50 latency (ms)",
        title="Latency vs batch",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "latency_vs_batch.png", dpi=120)
    plt.close(fig)
    written.append("latency_vs_batch.png")

    with_acc = [b for b in results["bundles"] if (b.get("accuracy") or {}).get("top1") is not None]
    batch = str(min(int(k) for k in results["bundles"][0]["latency"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    largest = max(b["artefact_bytes"] for b in results["bundles"])
    for b in with_acc or results["bundles"]:
        if batch not in b["latency"]:
            continue
        y = 100 * b["accuracy"]["top1"] if with_acc else 0.0
        size = 60 + 1500 * b["artefact_bytes"] / largest
        ax.scatter(b["latency"][batch]["p50_ms"], y, s=size, alpha=0.5)
        ax.annotate(
            f"{b['name']}\n{b['artefact_bytes'] / 1024:.0f} KiB",
            (b["latency"][batch]["p50_ms"], y),
            fontsize=7,
            ha="center",
        )
    ax.set(
        xlabel=f"p50 latency at batch {batch} (ms)",
        ylabel="top-1 accuracy (%)" if with_acc else "(no accuracy measured)",
        title="Accuracy vs latency vs size (bubble area = file size)",
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=120)
    plt.close(fig)
    written.append("pareto.png")
    return written


def write_report(results: dict, folder: Path) -> None:
    """results.json (atomically), report.md, results.csv and the plots under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(results))
    write_csv(results, folder / "results.csv")
    plot(results, folder)
