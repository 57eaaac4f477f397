"""MLPerf LoadGen scenarios on the default pipeline's dense and TT bundles (issue 17).

ONNX Runtime FP32 bundles of garipov-conv-fc ("dense") and garipov-tt-conv-tt-fc ("tt") from
`kompakt pipeline` (default config), measured in one run, interleaved:
- today's mode at batch 1 (p50 / p90, fresh process per measurement);
- LoadGen single-stream (p90 latency), offline (samples/s), server (highest QPS with p99 under
  10 ms, a 6-run search).
LoadGen's minimum durations are lowered to a few seconds per run (stated in the results).
Writes benchmarks/results/loadgen_scenarios.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kompakt.runtime_bench.bench import BenchConfig, run_config
from kompakt.runtime_bench.timing import save_results

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", default=str(HERE.parent / "runs" / "pipeline"))
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--bound-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    folder = Path(args.pipeline) / "bundles"
    bundles = [folder / "dense-onnxruntime-fp32", folder / "tt-onnxruntime-fp32"]
    missing = [str(b) for b in bundles if not b.is_dir()]
    if missing:
        raise SystemExit(f"run `kompakt pipeline` first; missing {missing}")
    common = {"duration_s": args.duration_s, "quiet": False, "threads": 2}
    rows = []
    today = run_config(bundles, BenchConfig(batches=(1,), rounds=2, min_runs=200, **common))
    for b in today["bundles"]:
        stats = b["latency"]["1"]
        rows.append(
            {
                "bundle": b["name"],
                "mode": "today b1",
                "p50_ms": stats["p50_ms"],
                "p90_ms": stats["p90_ms"],
                "cv": stats["cv"],
            }
        )
    for scenario in ("single-stream", "offline", "server"):
        config = BenchConfig(
            scenario=scenario,
            rounds=1,
            min_runs=100,
            target_latency_ms=args.bound_ms,
            search_steps=6,
            data="mnist5k",
            **common,
        )
        for b in run_config(bundles, config)["bundles"]:
            run = b["scenario"]
            rows.append(
                {
                    "bundle": b["name"],
                    "mode": f"loadgen {scenario}",
                    "metric": run["metric"],
                    "value": run["value"],
                    "validity": run["validity"],
                    "p50_ms": run.get("p50_ms"),
                    "p90_ms": run.get("p90_ms"),
                    "p99_ms": run.get("p99_ms"),
                    "trials": run.get("trials"),
                }
            )
            print(f"{b['name']} {scenario}: {run['metric']} {run['value']}", flush=True)
    save_results(
        str(HERE / "results" / "loadgen_scenarios.json"),
        "loadgen_scenarios",
        {"duration_s": args.duration_s, "bound_ms": args.bound_ms, "threads": 2},
        rows=rows,
        machine_load=today["settings"]["machine_load"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
