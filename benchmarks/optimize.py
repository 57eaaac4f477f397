"""`kompakt optimize` against the dense baselines (issue 23), per seed of the dense model.

For each seed: train garipov-conv-fc on mnist5k (--base-epochs, default 6), then
`kompakt optimize` (objective latency, batches 1 and 32, <= 0.5 points of top-1, 3 fine-tune
epochs, ONNX Runtime, 2 threads). optimize's own final bench runs the dense FP32, dense INT8
and optimized bundles side by side (interleaved, one run), so every ratio below comes from one
run on one machine. Reported per seed and as mean +- std over the seeds: speed-up vs dense INT8
at b1 / b32, file size vs dense FP32, top-1 change, predicted-vs-measured latency miss, the
choice, and optimize's wall time. Goals (issue 23): >= 1.5x (b1) and >= 1.3x (b32) vs dense
INT8, >= 20x smaller than dense FP32, within 0.5 points, prediction within 15 %, <= 15 min.

    python benchmarks/optimize.py --seeds 3            # ~15-20 min per seed on 2 cores
    python benchmarks/optimize.py --report-only        # results from the seeds finished so far
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KOMPAKT = [sys.executable, "-m", "kompakt.cli"]


def sh(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - start, 1)


def one_seed(seed: int, args, work: Path) -> dict:
    dense = work / f"dense{seed}"
    if not (dense / "best.pt").is_file():
        train = ["train", "--model", args.model, "--data", args.data, "--seed", str(seed)]
        sh([*KOMPAKT, *train, "--epochs", str(args.base_epochs), "--quiet", "--out", str(dense)])
    out = work / f"optimized{seed}"
    options = ["--batches", "1,32", "--max-accuracy-drop", str(args.max_drop)]
    options += ["--finetune-epochs", str(args.epochs), "--threads", "2", "--seed", str(seed)]
    options += ["--backend", args.backend] if args.backend else []
    wall = sh([*KOMPAKT, "optimize", str(dense / "best.pt"), *options, "--quiet", "-o", str(out)])
    summary = json.loads((out / "optimize.json").read_text())
    chosen = next(r for r in summary["rounds"] if r["round"] == summary["chosen_round"])
    bundles = chosen["measured"]["bundles"]
    int8, fp32 = summary["versus"].get("dense-int8", {}), summary["versus"]["dense-fp32"]
    return {
        "seed": seed,
        "optimize_wall_s": wall,
        "rounds": len(summary["rounds"]),
        "within_limit": summary["within_accuracy_limit"],
        "choice": chosen["selection"],
        "forms": chosen["forms"],
        "speedup_vs_int8": int8.get("speedup"),
        "speedup_vs_fp32": fp32["speedup"],
        "smaller_than_fp32": fp32["smaller_file"],
        "top1_change_vs_fp32": fp32["top1_change_points"],
        "top1": {k: v["top1"] for k, v in bundles.items()},
        "p50_ms": {k: v["p50_ms"] for k, v in bundles.items()},
        "kib": {k: v["artefact_kib"] for k, v in bundles.items()},
        "predicted_ms": chosen["predicted"]["ms"],
        "prediction_miss": summary["prediction_miss"],
        "timed_miss": summary["timed_miss"],
        "timed_ms": chosen["timed_ms"],
        "machine": chosen["measured"]["machine"],
    }


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def _misses(row: dict) -> str:
    """The issue's goals this seed missed, in words ("none" when it met them all)."""
    speed = row["speedup_vs_int8"] or {}
    checks = [
        (speed.get("1", 0) >= 1.5, "b1 < 1.5x"),
        (speed.get("32", 0) >= 1.3, "b32 < 1.3x"),
        (row["smaller_than_fp32"] >= 20, "file < 20x smaller"),
        (row["top1_change_vs_fp32"] >= -0.5, "top-1 drop > 0.5"),
        (all(abs(v) <= 0.15 for v in row.get("timed_miss", {}).values()), "timing miss > 15 %"),
        (row["optimize_wall_s"] <= 900, "wall > 900 s"),
    ]
    missed = [text for ok, text in checks if not ok]
    return ", ".join(missed) or "none"


def render(rows: list[dict]) -> list[str]:
    def col(key, sub=None):
        return [(r[key][sub] if sub else r[key]) for r in rows if r.get(key) is not None]

    lines = [
        "| seed | choice | speed-up vs dense INT8 b1 / b32 | file vs dense FP32 | top-1 change "
        "(points) | additive / whole-model prediction miss b1, b32 | optimize wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sel = r["choice"]
        choice = f"{sel['model']}, {sel['precision']}: " + ", ".join(
            f"{k}={v}" for k, v in sel["layers"].items() if v != "keep"
        )
        s = r["speedup_vs_int8"] or {}
        m, w = r["prediction_miss"], r.get("timed_miss", {})
        lines.append(
            f"| {r['seed']} | {choice} | {s.get('1', 0):.2f}x / {s.get('32', 0):.2f}x | "
            f"{r['smaller_than_fp32']:.1f}x | {r['top1_change_vs_fp32']:+.2f} | "
            f"{100 * m.get('1', 0):+.0f} / {100 * w.get('1', 0):+.0f} %, "
            f"{100 * m.get('32', 0):+.0f} / {100 * w.get('32', 0):+.0f} % | "
            f"{r['optimize_wall_s']:.0f} |"
        )
    lines += [
        "",
        f"- speed-up vs dense INT8, b1: {_mean_std(col('speedup_vs_int8', '1'))} "
        "(goal >= 1.5x); b32: " + _mean_std(col("speedup_vs_int8", "32")) + " (goal >= 1.3x)",
        f"- file vs dense FP32: {_mean_std(col('smaller_than_fp32'))}x smaller (goal >= 20x)",
        f"- top-1 change vs dense: {_mean_std(col('top1_change_vs_fp32'))} points "
        "(goal within -0.5)",
        f"- |additive prediction miss| b1: "
        f"{_mean_std([abs(v) * 100 for v in col('prediction_miss', '1')])} %, b32: "
        f"{_mean_std([abs(v) * 100 for v in col('prediction_miss', '32')])} % (goal within 15 %)",
        f"- |whole-model timing miss| b1: "
        f"{_mean_std([abs(v) * 100 for v in col('timed_miss', '1')])} %, b32: "
        f"{_mean_std([abs(v) * 100 for v in col('timed_miss', '32')])} %",
        f"- optimize wall time: {_mean_std(col('optimize_wall_s'))} s (goal <= 900 s)",
        "- goals missed, per seed: " + "; ".join(f"seed {r['seed']}: {_misses(r)}" for r in rows),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="garipov-conv-fc")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3, help="optimize's fine-tune epochs")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_optimize"))
    args = parser.parse_args(argv)
    from kompakt.runtime_bench.timing import save_results

    work = Path(args.work) / f"{args.model}-{args.data}-{args.backend or 'onnxruntime'}"
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "partial.json"
    rows = json.loads(partial.read_text()) if partial.is_file() else {}
    for seed in range(args.seeds):
        if args.report_only or str(seed) in rows:
            continue
        rows[str(seed)] = one_seed(seed, args, work)
        partial.write_text(json.dumps(rows, indent=1))
        print(f"seed {seed} done", flush=True)
    ordered = [rows[k] for k in sorted(rows, key=int)]
    name = f"optimize_{args.model}_{args.backend or 'onnxruntime'}"
    save_results(
        str(HERE / "results" / f"{name}.json"),
        "optimize",
        vars(args),
        rows=ordered,
        table=render(ordered),
    )
    print("\n".join(render(ordered)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
