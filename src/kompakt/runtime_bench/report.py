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
    lines += gpu_lines(results["bundles"])
    lines += loadgen_lines(results["bundles"])
    warnings = [f"- {b['name']}: {w}" for b in results["bundles"] for w in b["warnings"]]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    lines += ["", "Source of truth: results.json (plots beside it).", ""]
    return "\n".join(lines)


def loadgen_lines(bundles: list[dict]) -> list[str]:
    """MLPerf LoadGen results: the scenario's metric, LoadGen's verdict, the latencies; for the
    server scenario every QPS trial of the search."""
    rows = [b for b in bundles if b.get("scenario")]
    if not rows:
        return []
    first = rows[0]["scenario"]
    lines = [
        "",
        f"## MLPerf LoadGen: {first['scenario']} (LoadGen {first.get('loadgen_version')})",
        "",
        "LoadGen's minimum duration / query count were lowered to the settings below; a short "
        "run can be INVALID for LoadGen's early-stopping rule while its latency bound holds.",
        "",
        "| bundle | metric | value | LoadGen verdict | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in rows:
        run = b["scenario"]
        lines.append(
            f"| {b['name']} | {run['metric']} | {_fmt(run['value'], 3)} | {run.get('validity')} | "
            f"{_fmt(run.get('p50_ms'))} | {_fmt(run.get('p90_ms'))} | {_fmt(run.get('p99_ms'))} |"
        )
    trials = [(b["name"], t) for b in rows for t in b["scenario"].get("trials", [])]
    if trials:
        bound = first["settings"].get("target_latency_ms")
        lines += [
            "",
            f"Server QPS search (p99 bound {bound} ms): every LoadGen run",
            "",
            "| bundle | target QPS | achieved samples/s | p99 ms | bound met | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in trials:
            lines.append(
                f"| {name} | {t['target_qps']:.1f} | {_fmt(t.get('samples_per_s'), 1)} | "
                f"{_fmt(t.get('p99_ms'))} | {t.get('latency_bound_met')} | {t.get('validity')} |"
            )
    return lines


def gpu_lines(bundles: list[dict]) -> list[str]:
    """The GPU table: device memory and the engine-only latency next to end-to-end. Figures
    not produced by a real GPU are labelled, never shown as measurements."""
    rows = [b for b in bundles if b.get("gpu")]
    if not rows:
        return []
    lines = [
        "",
        "## GPU",
        "",
        "End-to-end latency above includes the host<->device copies; 'engine only' has the "
        "inputs already on the device. Every call waits for the CUDA stream.",
        "",
        "| bundle | device | activation memory per context MiB | device memory used, delta "
        "(whole device, all processes) MiB | engine-only p50 ms by batch |",
        "|---|---|---|---|---|",
    ]
    for b in rows:
        gpu = b["gpu"]
        mib = lambda v: "–" if v is None else f"{v / 2**20:.1f}"  # noqa: E731
        engine_only = ", ".join(
            f"b{k} {v['p50_ms']:.3f}" for k, v in gpu["timing"]["device_only"].items()
        )
        device = gpu["device"] if gpu.get("measured_on_gpu") else "GPU: not measured (stand-in)"
        lines.append(
            f"| {b['name']} | {device} | {mib(gpu.get('context_device_memory_bytes'))} | "
            f"{mib(gpu.get('device_used_delta_bytes'))} | {engine_only or '–'} |"
        )
    return lines


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
    if any(b.get("scenario", {}) and b["scenario"].get("trials") for b in results["bundles"]):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        server_plot(ax, results["bundles"])
        fig.savefig(folder / "server_qps_p99.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append("server_qps_p99.png")
    if not any(b["latency"] for b in results["bundles"]):
        return written  # a LoadGen run: no batch timings to plot
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for b in results["bundles"]:
        batches = sorted(int(k) for k in b["latency"])
        ax.errorbar(
            batches,
            [b["latency"][str(k)]["p50_ms"] for k in batches],
            yerr=[b["latency"][str(k)]["std_ms"] for k in batches],
            marker="o",
            capsize=3,
            label=b["name"],
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

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    pareto_plot(ax, results["bundles"])
    fig.savefig(folder / "pareto.png", dpi=120, bbox_inches="tight")  # labels never clipped
    plt.close(fig)
    written.append("pareto.png")
    return written


def server_plot(ax, bundles: list[dict]) -> None:
    """p99 latency vs target QPS of every server-scenario trial, one curve per bundle."""
    bound = None
    for b in bundles:
        trials = sorted((b.get("scenario") or {}).get("trials", []), key=lambda t: t["target_qps"])
        if not trials:
            continue
        bound = trials[0]["settings"].get("target_latency_ms")
        ax.plot(
            [t["target_qps"] for t in trials],
            [t["p99_ms"] for t in trials],
            marker="o",
            label=b["name"],
        )
    if bound:
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1, label=f"p99 bound {bound} ms")
    ax.set(xlabel="target QPS (Poisson arrivals)", ylabel="p99 latency (ms)", yscale="log")
    ax.set_title("Server scenario: p99 latency vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def model_of(bundle: dict) -> str:
    """The model a bundle holds: its name without the -backend-precision the pipeline adds."""
    suffix = f"-{bundle['backend']}-{bundle['precision']}"
    name = bundle["name"]
    return name[: -len(suffix)] if name.endswith(suffix) and name != suffix else name


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower x and higher y, by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(ax, bundles: list[dict]) -> None:
    from kompakt.plotting import numbered_labels, spread_axis

    """Accuracy vs latency at the smallest batch: colour = model, marker = backend/precision,
    area = file size, error bars = the measured spread (latency std; accuracy's binomial std),
    the Pareto front drawn."""
    from matplotlib.lines import Line2D

    batch = str(min(int(k) for b in bundles for k in b["latency"]))
    shown = [b for b in bundles if batch in b["latency"]]
    has_acc = all((b.get("accuracy") or {}).get("top1") is not None for b in shown)
    models = sorted({model_of(b) for b in shown})
    kinds = sorted({(b["backend"], b["precision"]) for b in shown})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(kinds)}
    largest = max(b["artefact_bytes"] for b in shown)
    points = []
    for b in shown:
        stats = b["latency"][batch]
        accuracy = b.get("accuracy") or {}
        y = 100 * accuracy["top1"] if has_acc else 0.0
        yerr = 0.0
        if has_acc and accuracy.get("samples"):
            p = accuracy["top1"]
            yerr = 100 * (p * (1 - p) / accuracy["samples"]) ** 0.5
        points.append((stats["p50_ms"], y))
        ax.errorbar(
            stats["p50_ms"],
            y,
            xerr=stats["std_ms"],
            yerr=yerr,
            fmt=markers[(b["backend"], b["precision"])],
            color=colours[model_of(b)],
            markersize=6 + 14 * (b["artefact_bytes"] / largest) ** 0.5,
            alpha=0.75,
            capsize=3,
        )
    front = pareto_front(points)
    if has_acc and len(front) > 1:
        ax.step(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            where="post",
            linestyle="--",
            color="grey",
            linewidth=1,
        )
    handles = [
        Line2D([], [], color=colour, marker="o", linestyle="", label=model)
        for model, colour in colours.items()
    ]
    handles += [
        Line2D([], [], color="grey", marker=mk, linestyle="", label=f"{k[0]} {k[1]}")
        for k, mk in markers.items()
    ]
    if has_acc and len(front) > 1:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="Pareto front"))
    # below the axes: inside, it hid points wherever "best" found no empty corner
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4)
    ax.margins(0.15)
    spread_axis(ax, [p[0] for p in points])
    keys = [
        f"{b['name']}  {b['artefact_bytes'] / 1024:,.0f} KiB  {p[0]:.3g} ms"
        + (f"  {p[1]:.2f} %" if has_acc else "")
        for b, p in zip(shown, points, strict=True)
    ]
    numbered_labels(ax, points, keys, title=f"batch {batch}: bundle, file, p50, top-1")
    ax.set(
        xlabel=f"p50 latency at batch {batch} (ms), bars: ± std",
        ylabel="top-1 accuracy (%), bars: ± binomial std" if has_acc else "(no accuracy measured)",
        title="Accuracy vs latency vs size (marker size = file size)",
    )
    ax.grid(True, alpha=0.3)


def write_report(results: dict, folder: Path) -> None:
    """results.json (atomically), report.md, results.csv and the plots under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(folder / "report.md", render_markdown(results))
    write_csv(results, folder / "results.csv")
    plot(results, folder)
