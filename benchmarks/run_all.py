"""Run the whole benchmark suite in one go and regenerate benchmarks/RESULTS.md.

    python benchmarks/run_all.py                 # everything (about 25 minutes on 2 cores)
    python benchmarks/run_all.py --only render   # just re-render RESULTS.md from the JSONs

Each benchmark writes its JSON (with the machine) to benchmarks/results/; the pipeline's
results come from runs/pipeline/ (`kompakt pipeline`, the default mnist5k config).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STEPS = {
    "tt_linear": [sys.executable, str(HERE / "tt_linear.py")],
    "tt_svd_scale": [sys.executable, str(HERE / "tt_svd_scale.py")],
    "export_tt": [sys.executable, str(HERE / "export_tt.py")],
    "runtime_overhead": [sys.executable, str(HERE / "runtime_overhead.py")],
    "precision": [sys.executable, str(HERE / "precision.py")],
    "int8_matmul_crossover": [sys.executable, str(HERE / "int8_matmul_crossover.py")],
    "bundle_sizes": [sys.executable, str(HERE / "bundle_sizes.py")],
    "train_mnist5k": [sys.executable, str(HERE / "train_mnist5k.py")],
    "prune_mnist5k": [sys.executable, str(HERE / "prune_mnist5k.py")],
    "compress_trained": [sys.executable, str(HERE / "compress_trained.py")],
    "optimize": [sys.executable, str(HERE / "optimize.py"), "--seeds", "3"],
    "search": [sys.executable, str(HERE / "search_experiment.py")],
    "pipeline": [sys.executable, "-m", "kompakt.cli", "pipeline", "--out", "runs/pipeline"],
    "loadgen_scenarios": [sys.executable, str(HERE / "loadgen_scenarios.py")],  # after pipeline
}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pipeline() -> dict | None:
    path = HERE.parent / "runs" / "pipeline" / "summary.json"
    if not path.is_file():
        path = RESULTS / "pipeline_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def headline(summary: dict) -> list[str]:
    rows = summary["summary"]
    lines = [
        "| bundle | parameters | file KiB | ORT p50 b1 ms | ORT p50 b32 ms | peak RSS MiB "
        "| test top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["p50_ms"]
        lines.append(
            f"| {r['bundle']} | {r['params']:,} | {r['artefact_kib']:.1f} | "
            f"{lat.get('1', float('nan')):.3f} | {lat.get('32', float('nan')):.3f} | "
            f"{r['peak_rss_mib']:.1f} | {100 * r['top1']:.2f} % |"
        )
    by = {r["bundle"]: r for r in rows}
    dense, tt = by.get("dense-onnxruntime-fp32"), by.get("tt-onnxruntime-fp32")
    if dense and tt:
        speed = dense["p50_ms"]["1"] / tt["p50_ms"]["1"]
        size = dense["artefact_kib"] / tt["artefact_kib"]
        rss = tt["peak_rss_mib"] / dense["peak_rss_mib"]
        points = 100 * (dense["top1"] - tt["top1"])
        checks = [
            ("latency at batch 1", ">= 3x lower", f"{speed:.2f}x", speed >= 3),
            ("file size", ">= 30x smaller", f"{size:.1f}x", size >= 30),
            ("peak RSS of the runtime process", "<= 0.5x", f"{rss:.2f}x", rss <= 0.5),
            ("accuracy (TT - dense)", "within 1.5 points", f"{-points:+.2f} points", points <= 1.5),
        ]
        lines += [
            "",
            "Whole-model goal, `garipov-tt-conv-tt-fc` vs dense `garipov-conv-fc` on "
            "ONNX Runtime CPU (fp32):",
            "",
            "| criterion | goal | measured | |",
            "|---|---|---|---|",
        ]
        lines += [f"| {c} | {g} | {m} | {'met' if ok else 'missed'} |" for c, g, m, ok in checks]
    return lines


def _nan(value) -> float:
    return float("nan") if value is None else value


def export_tt_section(ex: dict) -> list[str]:
    out = [
        "## Exported TT layers in ONNX Runtime CPU (`export_tt.py`)",
        "",
        "`auto` = the default `kompakt export` (one plan for batches 1..256, priced by the cost "
        "model calibrated on this machine); `autotune` = `--tt-plan autotune`; `chain` = the "
        "core-by-core contraction (the previous default). `/ fastest` = auto's time over the "
        "fastest of every export form of the layer in a census at fewer runs.",
        "",
        "| case | batch | dense ms | auto ms | auto plan | auto x | autotune x | chain x "
        "| vs tltorch factorized | auto / fastest | MAC floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ex["linear"]:
        sp, peer, census = (
            r["speedup_vs_dense"],
            r.get("kompakt_vs_tltorch", {}),
            r.get("census", {}),
        )
        out.append(
            f"| {r['case']} | {r['batch']} | {r['ms']['dense']:.3f} | "
            f"{r['ms']['kompakt-auto']:.3f} | {r['auto_form']} | {sp['kompakt-auto']:.2f}x | "
            f"{sp['kompakt-autotune']:.2f}x ({r['autotune_form']}) | "
            f"{sp['kompakt-factored']:.2f}x | {_nan(peer.get('tltorch-factorized')):.2f}x | "
            f"{_nan(census.get('auto_over_fastest')):.2f} | {r['macs_ratio']:.1f}x |"
        )
    linear = ex["linear"]
    if linear:
        out += [
            "",
            "Export time with the planner: "
            + ", ".join(
                f"{r['case']}: auto {r['export_s']['auto']} s, "
                f"autotune {r['export_s']['autotune']} s"
                for r in linear
                if r["batch"] == linear[0]["batch"]
            )
            + ".",
        ]
    out += [
        "",
        "| TT-conv | batch | auto form | auto ms | rebuilt ms | chain ms | separable ms | "
        "nn.Conv2d ms | auto x conv | auto / fastest | file conv / auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ex["conv"]:
        ms = r["ms"]
        out.append(
            f"| {r['case']} | {r['batch']} | {r['auto_form']} | {ms['auto']:.3f} | "
            f"{ms['factored']:.3f} | {ms['chain']:.3f} | {ms['separable']:.3f} | "
            f"{ms['nn.Conv2d']:.3f} | {r['auto_speedup_vs_conv']:.2f}x | "
            f"{r['auto_over_fastest']:.2f} | {r['file_ratio_conv_over_auto']:.1f}x |"
        )
    if ex.get("models"):
        out += [
            "",
            "| whole model (28x28, default export) | batch | dense ms | compressed ms | speedup "
            "| file ratio | forms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in ex["models"]:
            forms = ", ".join(f"{k}: {v}" for k, v in r["forms"].items())
            out.append(
                f"| {r['compressed']} vs {r['dense']} | {r['batch']} | "
                f"{r['ms'][r['dense']]:.3f} | {r['ms'][r['compressed']]:.3f} | "
                f"{r['speedup']:.2f}x | {r['file_ratio']:.1f}x | {forms} |"
            )
    out.append("")
    return out


def prune_section(pm: dict) -> list[str]:
    st = pm["settings"]
    out = [
        "## Filter pruning at 60 % sparsity on mnist5k (`prune_mnist5k.py`)",
        "",
        f"Width {st['width']}, {st.get('total_epochs')} epochs in total for every method "
        f"({st['base_epochs']} base + {st['finetune_epochs']} pruning / fine-tune), seeds "
        f"{st.get('seeds')} (each its own baseline), test top-1 on the mnist5k test split as "
        f"mean +- std over seeds; latency: {st.get('latency')}.",
        "",
        "| model | method | seeds | parameters | multiply-adds | test top-1 | ORT b1 ms | "
        "ORT b32 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in pm["rows"]:
        out.append(
            f"| {r['model']} | {r['method']} | {r['seeds']} | {r['params_mean']:,} | "
            f"{r['macs_mean']:,} | {100 * r['test_top1_mean']:.2f} +- "
            f"{100 * r['test_top1_std']:.2f} % | {_nan(r.get('ort_ms_b1')):.3f} | "
            f"{_nan(r.get('ort_ms_b32')):.3f} |"
        )
    out.append("")
    return out


def compress_section(ct: dict) -> list[str]:
    base = ct["rows"][0]["test_accuracy"]
    bases = {
        "resnet18": next(
            (
                r["test_accuracy"]
                for r in ct["rows"]
                if r["recipe"].endswith("dense baseline") and r["recipe"].startswith("resnet18")
            ),
            None,
        ),
        "model defined": next(
            (
                r["test_accuracy"]
                for r in ct["rows"]
                if r["recipe"].endswith("dense baseline")
                and r["recipe"].startswith("model defined")
            ),
            None,
        ),
    }
    out = [
        "## Compressing a trained model (`compress_trained.py`)",
        "",
        f"garipov-conv-fc trained {ct['settings']['base_epochs']} epochs on mnist5k, then TT "
        f"at ranks {ct['settings']['ranks']} on every conv and FC layer (10.8 M -> 63 k "
        "parameters, 171x) or a `--ratio` rank budget, fine-tuned by each recipe; resnet18-cifar "
        "(width 0.25) and a model defined in the benchmark file likewise. `vs dense` is against "
        "each row's own dense baseline; `params x` = whole-model parameters of the baseline / "
        "this row's. Wall times include process start and were measured while other work shared "
        "the 2 cores (compare accuracies, not times).",
        "",
        "| recipe | test top-1 | vs dense | params x | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in ct["rows"]:
        ref = next((v for k, v in bases.items() if r["recipe"].startswith(k)), None) or base
        ratio = r.get("model_params_ratio")
        out.append(
            f"| {r['recipe']} | {100 * r['test_accuracy']:.2f} % | "
            f"{100 * (r['test_accuracy'] - ref):+.2f} points | "
            f"{'' if ratio is None else f'{ratio:.1f}x'} | {r['wall_s']} |"
        )
    out.append("")
    for label, row in ct.get("seed_summary", {}).items():
        out.append(
            f"- {label}: {100 * row['mean']:.2f} +- {100 * row['std']:.2f} % over "
            f"{row['seeds']} seeds ({100 * (row['mean'] - base):+.2f} points vs dense)."
        )
    out.append("")
    return out


def optimize_section(op: dict) -> list[str]:
    """`kompakt optimize` against the dense baselines, per seed (the table the script wrote)."""
    settings = op["settings"]
    machine = op["rows"][0]["machine"] if op["rows"] else op["machine"]
    return [
        f"## `kompakt optimize` (`optimize.py`, {settings['model']} on {settings['data']}, "
        f"{settings['backend'] or 'onnxruntime'})",
        "",
        f"Dense model trained {settings['base_epochs']} epochs per seed; optimize with "
        f"`--batches 1,32 --max-accuracy-drop {settings['max_drop']} --finetune-epochs "
        f"{settings['epochs']} --threads 2`; every ratio from optimize's own side-by-side bench "
        f"(dense FP32, dense INT8, optimized; one run). Machine: {machine['cpu']}, "
        f"{machine['cores']} cores. {len(op['rows'])} seed(s).",
        "",
        *op["table"],
        "",
    ]


def tt_svd_scale_section(result: dict) -> list[str]:
    lines = [
        "## TT-SVD and rank planning at ImageNet scale (`tt_svd_scale.py`)",
        "",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores; weight: "
        f"{result['settings']['weight']}. The exact column is a full SVD of every unfolding "
        "(what TT-SVD did before); errors are relative Frobenius errors of the rebuilt layer.",
        "",
        "| case | ranks | scaled s | exact s | speed-up | scaled error | exact error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["cases"].items():
        if "exact_s" in row:
            lines.append(
                f"| {name} | {row['ranks']} | {row['fast_s']} | {row['exact_s']} | "
                f"{row['speedup']}x | {row['fast_rel_error']:.5f} | {row['exact_rel_error']:.5f} |"
            )
        else:
            before = sum(r["params_before"] for r in row["layers"])
            after = sum(r["params_after"] for r in row["layers"])
            lines.append(
                f"| {name} | {row['ranks']} | {row['fast_s']} | – | – | "
                f"{before / after:.0f}x fewer parameters | – |"
            )
    lines += [
        "",
        f"Peak RSS {result['peak_rss_mib']} MiB (the exact reference SVDs included). Planning "
        "computes each big unfolding's 128 leading singular values only, so no bond gets a "
        "higher rank: on a 100M-parameter layer a `ratio` budget can be under-used (more "
        "compression than asked; the report states what was reached).",
        "",
    ]
    return lines


def render() -> str:
    out = [
        "# kompakt benchmark results",
        "",
        f"Regenerated {datetime.now(timezone.utc).date()} by `benchmarks/run_all.py` from the "
        "JSON files in `benchmarks/results/` (each records its machine and settings).",
        "",
    ]
    summary = _pipeline()
    machine = None
    if summary:
        out += ["## Headline: the default `kompakt pipeline` (mnist5k, 3 epochs each)", ""]
        out += headline(summary)
        out += ["", f"Pipeline wall time: {summary['wall_s']} s.", ""]
    tt = _load("tt_linear")
    if tt:
        machine = tt["machine"]
        out += [
            "## TTLinear vs nn.Linear, PyTorch CPU (`tt_linear.py`)",
            "",
            "| case | batch | dense ms | TT ms | speedup | MAC ratio |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['case']} | {r['batch']} | {r['dense_ms']:.3f} | {r['tt_ms']:.3f} | "
            f"{r['speedup']:.1f}x | {r['macs_ratio']:.1f}x |"
            for r in tt["rows"]
        ]
        out.append("")
    scale = _load("tt_svd_scale")
    if scale:
        out += tt_svd_scale_section(scale)
    ex = _load("export_tt")
    if ex:
        out += export_tt_section(ex)
    ro = _load("runtime_overhead")
    if ro:
        out += [
            "## `Engine.run` vs raw `InferenceSession.run` (`runtime_overhead.py`)",
            "",
            "| model | batch | raw us | engine us | overhead |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['batch']} | {r['raw_us']} | {r['engine_us']} | "
            f"{r['overhead_us']} us ({r['overhead_pct']} %) |"
            for r in ro["rows"]
        ]
        out.append("")
    pr = _load("precision")
    if pr:
        isa = pr["settings"].get("int8_isa", {})
        out += [
            "## FP32 vs INT8 (portable / full-range) vs auto, ONNX Runtime vs OpenVINO "
            "(`precision.py`, mnist5k test split)",
            "",
            f"CPU integer dot product: {isa.get('dot', '?')}. `variant=precision`: what was "
            "asked and what the bundle is (auto keeps INT8 only where it measured faster at every "
            "batch). Sizes: the engine's artefact next to the ONNX graph. Golden: the drift "
            "`Engine.verify` measured (max rel).",
            "",
            "| model | backend | variant | batch | ms | vs fp32 | artefact KiB | / ONNX | top-1 "
            "| drop (points) | golden |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['backend']} | {r.get('variant', r['precision'])}="
            f"{r['precision']} | {r['batch']} | {r['ms']:.3f} | {r['speedup_vs_fp32']:.2f}x | "
            f"{r.get('artefact_kib', '–')} | {r.get('artefact_vs_onnx', '–')} | "
            f"{100 * r['test_top1']:.2f} % | {r['drop_points']:+.2f} | "
            f"{r.get('golden_max_rel', '–')} |"
            for r in pr["rows"]
        ]
        if pr.get("calibration"):
            out += [
                "",
                "INT8 calibration methods (portable scheme, ONNX Runtime, validation split):",
                "",
                "| model | minmax drop | entropy drop | percentile drop |",
                "|---|---|---|---|",
            ]
            by_model: dict[str, dict] = {}
            for c in pr["calibration"]:
                by_model.setdefault(c["model"], {})[c["method"]] = c["val_drop_points"]
            out += [
                f"| {m} | {d.get('minmax', '–')} | {d.get('entropy', '–')} | "
                f"{d.get('percentile', '–')} |"
                for m, d in by_model.items()
            ]
        out.append("")
    mm = _load("int8_matmul_crossover")
    if mm:
        out += [
            "## Where INT8 pays for a MatMul (`int8_matmul_crossover.py`)",
            "",
            f"(4096, K) @ (K, 64) in ONNX Runtime, 1 thread; kompakt keeps K < "
            f"{mm['settings']['kompakt_threshold']} in float.",
            "",
            "| K | int8 / fp32 time |",
            "|---|---|",
        ]
        out += [f"| {r['inner']} | {r['int8_over_fp32']:.2f} |" for r in mm["rows"]]
        out.append("")
    bs = _load("bundle_sizes")
    if bs:
        out += [
            "## ONNX vs OpenVINO IR vs what the bundle ships (`bundle_sizes.py`, fp32, 28x28)",
            "",
            "| model | ONNX KiB | IR KiB | shipped | shipped KiB | / ONNX |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['onnx_kib']} | {r['ir_kib']} | {r['shipped']} | "
            f"{r['shipped_kib']} | {r['shipped_vs_onnx']} |"
            for r in bs["rows"]
        ]
        out.append("")
    tr = _load("train_mnist5k")
    if tr:
        out += [
            "## Training on mnist5k (`train_mnist5k.py`)",
            "",
            "| model | epochs | parameters | vs conv-fc | test top-1 | wall s |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['epochs']} | {r['params']:,} | "
            f"{r['compression_vs_conv_fc']:.1f}x fewer | {100 * r['test_accuracy']:.2f} % | "
            f"{r['wall_s']} |"
            for r in tr["rows"]
        ]
        out.append("")
    pm = _load("prune_mnist5k")
    if pm:
        out += prune_section(pm)
    ct = _load("compress_trained")
    if ct:
        out += compress_section(ct)
    for name in sorted(p.stem for p in RESULTS.glob("optimize_*.json")):
        out += optimize_section(_load(name))
    lg = _load("loadgen_scenarios")
    if lg:
        out += [
            "## MLPerf LoadGen scenarios (`loadgen_scenarios.py`)",
            "",
            "The default pipeline's dense and TT bundles (ONNX Runtime FP32, 2 threads), LoadGen "
            f"runs of {lg['settings']['duration_s']} s (LoadGen's own minimum is 600 s, so its "
            "verdict can be INVALID by its early-stopping rule), server bound p99 <= "
            f"{lg['settings']['bound_ms']} ms. Machine load before: {lg['machine_load']}.",
            "",
            "| bundle | mode | metric | value | LoadGen verdict | p50 ms | p90 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def ms(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        for r in lg["rows"]:
            value = r.get("value", r.get("p90_ms"))  # today's mode: its p90 is the metric
            out.append(
                f"| {r['bundle']} | {r['mode']} | {r.get('metric', 'p90_latency_ms')} | "
                f"{ms(value)} | {r.get('validity', '–')} | {ms(r.get('p50_ms'))} | "
                f"{ms(r.get('p90_ms'))} | {ms(r.get('p99_ms'))} |"
            )
        out.append("")
    se = _load("search")
    if se:
        out += [
            "## Structure search (`search_experiment.py`)",
            "",
            "| dataset | model | parameters | test metric | search s |",
            "|---|---|---|---|---|",
        ]
        for r in se["rows"]:
            metric = (
                f"RMSE {r['test_rmse']:.3f}"
                if "test_rmse" in r
                else f"top-1 {100 * r['test_accuracy']:.2f} %"
            )
            out.append(
                f"| {r['dataset']} | {r['model']} | {r['params']:,} | {metric} | "
                f"{r['search_s'] if r['search_s'] is not None else '–'} |"
            )
        out.append("")
    machine = machine or (pr or ro or {}).get("machine")
    if machine:
        out += [
            f"Machine: {machine['cpu']}, {machine['cores']} cores, "
            f"{machine.get('memory_gib')} GiB, {machine['os']}, Python {machine['python']}. "
            "GPU: not measured (no GPU on this project's machines).",
            "",
        ]
    return "\n".join(out)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(summary: dict) -> None:
    """Replace the README's headline table (between the results markers) with the new one."""
    readme = HERE.parent / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table = "\n".join(headline(summary))
    readme.write_text(
        f"{head}{BEGIN}\n{table}\n\nPipeline wall time: {summary['wall_s']} s.\n{END}{tail}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", default=None, help=f"comma list of steps ({', '.join(STEPS)}) or 'render'"
    )
    args = parser.parse_args(argv)
    steps = list(STEPS) if not args.only else [s for s in args.only.split(",") if s in STEPS]
    for step in steps:
        print(f"== {step}", file=sys.stderr)
        subprocess.run(STEPS[step], check=True, cwd=HERE.parent)
    summary = _pipeline()
    if summary:
        (RESULTS / "pipeline_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (HERE / "RESULTS.md").write_text(render())
    if summary:
        update_readme(summary)
    print(f"wrote {HERE / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
