"""Exported TT layers vs exported dense layers (and TensorLy-Torch as a peer) in ONNX Runtime CPU.

In one process: ONNX Runtime CPU EP, 2 intra-op threads, spinning off, median of >= 50 runs
after warm-up, models of one case timed interleaved (A B C A B C ...).
- TT-linear 25088->4096 (rank 4, Novikov's modes) and 8192->1536 (ranks 8 and 40): kompakt's
  default export (`auto`: one plan for batches 1..256, priced by the cost model calibrated
  here), `--tt-plan autotune`, the core-by-core chain (`factored`, the old default), dense
  nn.Linear, tltorch FactorizedLinear('blocktt', same modes and ranks) 'factorized' and
  'reconstructed', batches 1, 8, 64, 256; plus a census of every export form (all core
  groupings x directions, fewer runs) to say how far `auto` is from the fastest form.
- TT-conv 3x3 (128->128 and 64->64, ranks 8/4/2): every form (kernel rebuilt in-graph, the
  per-pixel chain, grouped spatial + 1x1 "separable", dense), the default `auto`, and a plain
  nn.Conv2d: latency and file size.
- Whole models: garipov-tt-conv-tt-fc and garipov-conv-tt-fc vs garipov-conv-fc at 28x28, default
  export, batch 1 and 32.

Run: python benchmarks/export_tt.py [--runs 50] [--batches 1,8,64,256]   (tltorch: pip install
'kompakt[bench]'; without it the peer columns say so). Writes benchmarks/results/export_tt.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from kompakt.export import ExportConfig, export_onnx
from kompakt.export.exporter import fixed_form
from kompakt.layers import TTConv2d, TTLinear
from kompakt.runtime_bench.timing import interleaved_medians, save_results

LINEAR_CASES = [
    ("25088->4096 r4", 25088, 4096, (2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4), 4),
    ("8192->1536 r8", 8192, 1536, (8, 8, 8, 16), (8, 8, 6, 4), 8),
    ("8192->1536 r40", 8192, 1536, (8, 8, 8, 16), (8, 8, 6, 4), 40),
]
# (channels, spatial size, rank cap)
CONV_CASES = [(128, 32, 8), (128, 32, 4), (128, 32, 2), (128, 16, 8), (64, 32, 8), (64, 32, 2)]
MODEL_PAIRS = [
    ("garipov-tt-conv-tt-fc", "garipov-conv-fc"),
    ("garipov-conv-tt-fc", "garipov-conv-fc"),
]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, x: np.ndarray, runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per run for each session, timed round-robin so drift hits all equally."""
    calls = {
        name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for name, s in sessions.items()
    }
    return interleaved_medians(calls, runs, warmup)


def export_plain(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """torch.onnx.export as a user of another library would call it (dynamic batch)."""
    from torch.export import Dim

    ep = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: Dim("batch")},))
    torch.onnx.export(
        ep,
        f=str(path),
        input_names=["input"],
        output_names=["logits"],
        external_data=False,
        opset_version=20,
    )
    return path


def tltorch_layers(case) -> dict[str, nn.Module] | str:
    try:
        import tltorch
    except ImportError:
        return "not measured: tltorch not installed (pip install 'kompakt[bench]')"
    _, _, _, in_modes, out_modes, rank = case
    layers = {}
    for impl in ("factorized", "reconstructed"):
        layers[f"tltorch-{impl}"] = tltorch.FactorizedLinear(
            in_tensorized_features=in_modes,
            out_tensorized_features=out_modes,
            factorization="blocktt",
            rank=rank,
            implementation=impl,
        ).eval()
    return layers


def export_form(layer: nn.Module, form: str, path: Path, example: torch.Tensor) -> str:
    """One export form of a TT layer, fixed (the planner does not re-decide it)."""
    return export_onnx(fixed_form(layer, form), path, ExportConfig(check=False), example).path


def sweep_forms(
    layer: nn.Module, example: torch.Tensor, batches, args, work: Path, reference: str
) -> dict[str, dict[int, float]]:
    """Time of every export form of `layer` relative to the `reference` form, per batch: a
    census at fewer runs. Forms are timed in chunks, each interleaved with the reference
    (a merged form can hold the dense weight in memory: 65 sessions at once do not fit)."""
    forms = [f for f in layer.export_forms() if f != reference]
    ref_path = export_form(layer, reference, work / "ref.onnx", example)
    ratios: dict[str, dict[int, float]] = {reference: dict.fromkeys(batches, 1.0)}
    for start in range(0, len(forms), 6):
        chunk = forms[start : start + 6]
        sessions = {reference: session(Path(ref_path), args.threads)}
        for i, form in enumerate(chunk):
            path = export_form(layer, form, work / f"form{i}.onnx", example)
            sessions[form] = session(Path(path), args.threads)
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *example.shape[1:]))
            med = time_interleaved(sessions, x.astype(np.float32), args.sweep_runs, 2)
            for form in chunk:
                ratios.setdefault(form, {})[batch] = round(med[form] / med[reference], 4)
        del sessions
    return ratios


def planned(layer: nn.Module, example: torch.Tensor, work: Path, name: str, **config) -> dict:
    start = time.perf_counter()
    report = export_onnx(layer, work / f"{name}.onnx", ExportConfig(**config), example)
    return {
        "path": report.path,
        "form": report.layers[0]["form"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def bench_linear(args, work: Path) -> list[dict]:
    rows = []
    for case in tqdm(LINEAR_CASES, desc="tt-linear"):
        name, n_in, n_out, in_modes, out_modes, rank = case
        torch.manual_seed(0)
        tt = TTLinear(n_in, n_out, in_modes, out_modes, ranks=rank).eval()
        example = torch.randn(2, n_in)
        # the product's defaults plan for batches 1..256 once (cost model calibrated here);
        # autotune times the cost model's shortlist in ONNX Runtime
        auto = planned(tt, example, work, "auto")
        tuned = planned(tt, example, work, "autotune", tt_plan="autotune")
        paths = {
            "dense": export_onnx(
                nn.Linear(n_in, n_out).eval(), work / "dense.onnx", ExportConfig(), example
            ).path,
            "kompakt-factored": export_form(tt, "factored", work / "tt.onnx", example),
            "kompakt-auto": auto["path"],
            "kompakt-autotune": tuned["path"],
        }
        peers = tltorch_layers(case)
        peer_note = peers if isinstance(peers, str) else None
        for peer, layer in ({} if peer_note else peers).items():
            try:
                paths[peer] = str(export_plain(layer, example, work / f"{peer}.onnx"))
            except Exception as error:  # report, do not crash the suite
                peer_note = f"{peer} export failed: {str(error).splitlines()[0]}"
        sessions = {k: session(Path(p), args.threads) for k, p in paths.items()}
        census = (
            sweep_forms(tt, example, args.batches, args, work, auto["form"])
            if args.sweep_runs
            else {}
        )
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, n_in)).astype(np.float32)
            runs = args.runs if batch < 256 or n_in < 20000 else max(30, args.runs // 2)
            med = time_interleaved(sessions, x, runs, args.warmup)
            row = {
                "case": name,
                "batch": batch,
                "runs": runs,
                "auto_form": auto["form"],
                "autotune_form": tuned["form"],
                "export_s": {"auto": auto["seconds"], "autotune": tuned["seconds"]},
                "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                "file_kib": {k: round(Path(p).stat().st_size / 1024, 1) for k, p in paths.items()},
                "speedup_vs_dense": {k: round(med["dense"] / v, 2) for k, v in med.items()},
                "macs_ratio": round(
                    n_in * n_out * batch / (tt.forward_macs(batch) - batch * n_out), 2
                ),
                "peer_note": peer_note,
            }
            if census:
                fastest = min(census, key=lambda f, b=batch: census[f][b])
                row["census"] = {
                    "forms": len(census),
                    "fastest": fastest,
                    "fastest_ms": census[fastest][batch],
                    "auto_over_fastest": round(
                        census[auto["form"]][batch] / census[fastest][batch], 3
                    ),
                    "autotune_over_fastest": round(
                        census[tuned["form"]][batch] / census[fastest][batch], 3
                    ),
                }
            if "tltorch-factorized" in med:
                row["kompakt_vs_tltorch"] = {
                    k: round(med[k] / med["kompakt-auto"], 2)
                    for k in ("tltorch-factorized", "tltorch-reconstructed")
                    if k in med
                }
            rows.append(row)
    return rows


def bench_conv(args, work: Path) -> list[dict]:
    rows = []
    for channels, size, rank in tqdm(CONV_CASES, desc="tt-conv"):
        torch.manual_seed(0)
        tt = TTConv2d(channels, channels, 3, padding=1, ranks=rank).eval()
        plain = nn.Conv2d(channels, channels, 3, padding=1).eval()
        example = torch.randn(2, channels, size, size)
        auto = planned(tt, example, work, "cauto")
        paths = {
            form: export_form(tt, form, work / f"c-{form}.onnx", example)
            for form in tt.export_forms()
        }
        paths["nn.Conv2d"] = export_onnx(plain, work / "cp.onnx", ExportConfig(), example).path
        paths["auto"] = auto["path"]
        sessions = {k: session(Path(p), args.threads) for k, p in paths.items()}
        for batch in (1, 8, 64):
            x = np.random.default_rng(0).standard_normal((batch, channels, size, size))
            med = time_interleaved(sessions, x.astype(np.float32), args.runs, args.warmup)
            kib = {k: round(Path(p).stat().st_size / 1024, 1) for k, p in paths.items()}
            forms = [f for f in tt.export_forms()]
            fastest = min(forms, key=lambda f, med=med: med[f])
            rows.append(
                {
                    "case": f"3x3 {channels}->{channels} @{size}x{size} r{rank}",
                    "batch": batch,
                    "ranks": list(tt.ranks),
                    "auto_form": auto["form"],
                    "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                    "file_kib": kib,
                    "auto_speedup_vs_conv": round(med["nn.Conv2d"] / med["auto"], 3),
                    "fastest_form": fastest,
                    "auto_over_fastest": round(med["auto"] / med[fastest], 3),
                    "file_ratio_conv_over_auto": round(kib["nn.Conv2d"] / kib["auto"], 2),
                }
            )
    return rows


def bench_models(args, work: Path) -> list[dict]:
    """Whole zoo models, TT vs dense twin, exported with the defaults (untrained weights:
    latency and size do not depend on their values; accuracy is in the training benchmark)."""
    from kompakt.models import build_model

    rows = []
    for compressed, dense in MODEL_PAIRS:
        torch.manual_seed(0)
        example = torch.randn(2, 1, 28, 28)
        reports = {}
        for name in (dense, compressed):
            model = build_model(name, 10, 1, 28).eval()
            reports[name] = export_onnx(model, work / f"{name}.onnx", ExportConfig(), example)
        sessions = {k: session(Path(r.path), args.threads) for k, r in reports.items()}
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
            med = time_interleaved(sessions, x, args.runs * 2, args.warmup)
            rows.append(
                {
                    "compressed": compressed,
                    "dense": dense,
                    "batch": batch,
                    "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                    "speedup": round(med[dense] / med[compressed], 2),
                    "file_ratio": round(
                        reports[dense].file_bytes / reports[compressed].file_bytes, 1
                    ),
                    "forms": {r["name"]: r["form"] for r in reports[compressed].layers},
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--sweep-runs", type=int, default=10, help="0: skip the form census")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_tt.json"))
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        linear = bench_linear(args, Path(tmp))
        conv = bench_conv(args, Path(tmp))
        models = bench_models(args, Path(tmp))
    result = save_results(
        args.out,
        "export_tt",
        {
            "runtime": f"onnxruntime {ort.__version__} CPU EP",
            "threads": args.threads,
            "spinning": False,
            "runs": args.runs,
            "warmup": args.warmup,
            "statistic": "median",
        },
        linear=linear,
        conv=conv,
        models=models,
    )
    out = args.out

    print(
        f"{'TT-linear':<16} {'batch':>5} {'dense ms':>9} {'auto ms':>8} {'auto':>22} "
        f"{'auto x':>7} {'tune x':>7} {'chain x':>7} {'vs tl-f':>8} {'/fastest':>8} {'MAC x':>6}"
    )
    for r in linear:
        ms, sp, peer = r["ms"], r["speedup_vs_dense"], r.get("kompakt_vs_tltorch", {})
        census = r.get("census", {})
        print(
            f"{r['case']:<16} {r['batch']:>5} {ms['dense']:>9.3f} {ms['kompakt-auto']:>8.3f} "
            f"{r['auto_form']:>22} {sp['kompakt-auto']:>6.2f}x {sp['kompakt-autotune']:>6.2f}x "
            f"{sp['kompakt-factored']:>6.2f}x "
            f"{peer.get('tltorch-factorized', float('nan')):>7.2f}x "
            f"{census.get('auto_over_fastest', float('nan')):>8.3f} {r['macs_ratio']:>5.1f}x"
        )
    if linear and linear[0]["peer_note"]:
        print(f"peer: {linear[0]['peer_note']}")
    print(
        f"\n{'TT-conv':<28} {'batch':>5} {'auto':>10} {'auto ms':>8} {'conv ms':>8} "
        f"{'x conv':>7} {'/fastest':>8} {'KiB ratio':>9}"
    )
    for r in conv:
        ms = r["ms"]
        print(
            f"{r['case']:<28} {r['batch']:>5} {r['auto_form']:>10} {ms['auto']:>8.3f} "
            f"{ms['nn.Conv2d']:>8.3f} {r['auto_speedup_vs_conv']:>6.2f}x "
            f"{r['auto_over_fastest']:>8.3f} {r['file_ratio_conv_over_auto']:>9.1f}"
        )
    print()
    for r in models:
        print(
            f"{r['compressed']} vs {r['dense']} batch {r['batch']}: {r['speedup']:.2f}x faster, "
            f"{r['file_ratio']:.1f}x smaller file; forms {r['forms']}"
        )
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
