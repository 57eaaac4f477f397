"""Exported TT layers vs exported dense layers (and TensorLy-Torch as a peer) in ONNX Runtime CPU.

In one process: ONNX Runtime CPU EP, 2 intra-op threads, spinning off, median of >= 50 runs
after warm-up, models of one case timed interleaved (A B C A B C ...).
- TT-linear 25088->4096 (rank 4, Novikov's modes) and 8192->1536 (ranks 8 and 40): kompakt
  `factored`, kompakt `auto` (planned for each batch), dense nn.Linear, tltorch
  FactorizedLinear('blocktt', same modes and ranks) in its 'factorized' and 'reconstructed'
  implementations, batches 1, 8, 64, 256.
- TT-conv 3x3 (128->128, 64->64 at 16x16 and 32x32): kompakt `factored` (kernel rebuilt
  in-graph from the cores) vs `dense` (materialised) vs a plain nn.Conv2d: latency and file size.

Run: python benchmarks/export_tt.py [--runs 50] [--batches 1,8,64,256]   (tltorch: pip install
'kompakt[bench]'; without it the peer columns say so). Writes benchmarks/results/export_tt.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from kompakt.export import ExportConfig, export_onnx
from kompakt.layers import TTConv2d, TTLinear
from kompakt.runtime_bench.timing import interleaved_medians, save_results

LINEAR_CASES = [
    ("25088->4096 r4", 25088, 4096, (2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4), 4),
    ("8192->1536 r8", 8192, 1536, (8, 8, 8, 16), (8, 8, 6, 4), 8),
    ("8192->1536 r40", 8192, 1536, (8, 8, 8, 16), (8, 8, 6, 4), 40),
]
CONV_CASES = [(128, 16), (128, 32), (64, 16), (64, 32)]  # (channels, spatial size)


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


def bench_linear(args, work: Path) -> list[dict]:
    rows = []
    for case in tqdm(LINEAR_CASES, desc="tt-linear"):
        name, n_in, n_out, in_modes, out_modes, rank = case
        torch.manual_seed(0)
        tt = TTLinear(n_in, n_out, in_modes, out_modes, ranks=rank).eval()
        example = torch.randn(2, n_in)
        paths = {
            "dense": export_onnx(
                nn.Linear(n_in, n_out).eval(), work / "dense.onnx", ExportConfig(), example
            ).path,
            "kompakt-factored": export_onnx(
                tt, work / "tt.onnx", ExportConfig(tt_mode="factored"), example
            ).path,
        }
        peers = tltorch_layers(case)
        peer_note = peers if isinstance(peers, str) else None
        for peer, layer in ({} if peer_note else peers).items():
            try:
                paths[peer] = str(export_plain(layer, example, work / f"{peer}.onnx"))
            except Exception as error:  # report, do not crash the suite
                peer_note = f"{peer} export failed: {str(error).splitlines()[0]}"
        for batch in args.batches:
            auto = export_onnx(
                tt,
                work / f"auto{batch}.onnx",
                ExportConfig(tt_mode="auto", max_batch=max(batch, 2)),
                example,
            )
            sessions = {k: session(Path(p), args.threads) for k, p in paths.items()}
            sessions["kompakt-auto"] = session(Path(auto.path), args.threads)
            x = np.random.default_rng(0).standard_normal((batch, n_in)).astype(np.float32)
            runs = args.runs if batch < 256 or n_in < 20000 else max(50, args.runs // 2)
            med = time_interleaved(sessions, x, runs, args.warmup)
            row = {
                "case": name,
                "batch": batch,
                "runs": runs,
                "auto_form": auto.layers[0]["form"],
                "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                "file_kib": {k: round(Path(p).stat().st_size / 1024, 1) for k, p in paths.items()},
                "speedup_vs_dense": {k: round(med["dense"] / v, 2) for k, v in med.items()},
                "macs_ratio": round(n_in * n_out * batch / (tt.flops(batch) - batch * n_out), 2),
                "peer_note": peer_note,
            }
            if "tltorch-factorized" in med:
                row["kompakt_vs_tltorch"] = {
                    k: round(med[k] / med["kompakt-factored"], 2)
                    for k in ("tltorch-factorized", "tltorch-reconstructed")
                    if k in med
                }
            rows.append(row)
    return rows


def bench_conv(args, work: Path) -> list[dict]:
    rows = []
    for channels, size in tqdm(CONV_CASES, desc="tt-conv"):
        torch.manual_seed(0)
        tt = TTConv2d(channels, channels, 3, padding=1, ranks=8).eval()
        plain = nn.Conv2d(channels, channels, 3, padding=1).eval()
        example = torch.randn(2, channels, size, size)
        paths = {
            "factored": export_onnx(
                tt, work / "cf.onnx", ExportConfig(tt_mode="factored"), example
            ).path,
            "dense": export_onnx(tt, work / "cd.onnx", ExportConfig(tt_mode="dense"), example).path,
            "nn.Conv2d": export_onnx(plain, work / "cp.onnx", ExportConfig(), example).path,
        }
        sessions = {k: session(Path(p), args.threads) for k, p in paths.items()}
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, channels, size, size))
            med = time_interleaved(sessions, x.astype(np.float32), args.runs, args.warmup)
            kib = {k: round(Path(p).stat().st_size / 1024, 1) for k, p in paths.items()}
            rows.append(
                {
                    "case": f"3x3 {channels}->{channels} @{size}x{size}",
                    "batch": batch,
                    "ranks": list(tt.ranks),
                    "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                    "file_kib": kib,
                    "factored_latency_vs_dense": round(med["factored"] / med["dense"], 3),
                    "file_ratio_dense_over_factored": round(kib["dense"] / kib["factored"], 2),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_tt.json"))
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        linear = bench_linear(args, Path(tmp))
        conv = bench_conv(args, Path(tmp))
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
    )
    out = args.out

    print(
        f"{'TT-linear':<16} {'batch':>5} {'dense ms':>9} {'fact ms':>8} {'auto':>10} "
        f"{'fact x':>7} {'auto x':>7} {'vs tl-f':>8} {'vs tl-r':>8} {'MAC x':>7}"
    )
    for r in linear:
        ms, sp, peer = r["ms"], r["speedup_vs_dense"], r.get("kompakt_vs_tltorch", {})
        print(
            f"{r['case']:<16} {r['batch']:>5} {ms['dense']:>9.3f} {ms['kompakt-factored']:>8.3f} "
            f"{r['auto_form']:>10} {sp['kompakt-factored']:>6.2f}x {sp['kompakt-auto']:>6.2f}x "
            f"{peer.get('tltorch-factorized', float('nan')):>7.2f}x "
            f"{peer.get('tltorch-reconstructed', float('nan')):>7.2f}x {r['macs_ratio']:>6.1f}x"
        )
    if linear and linear[0]["peer_note"]:
        print(f"peer: {linear[0]['peer_note']}")
    print(
        f"\n{'TT-conv':<24} {'batch':>5} {'fact ms':>8} {'dense ms':>9} {'conv ms':>8} "
        f"{'fact/dense':>10} {'KiB fact':>9} {'KiB dense':>9}"
    )
    for r in conv:
        ms, kib = r["ms"], r["file_kib"]
        print(
            f"{r['case']:<24} {r['batch']:>5} {ms['factored']:>8.3f} {ms['dense']:>9.3f} "
            f"{ms['nn.Conv2d']:>8.3f} {r['factored_latency_vs_dense']:>10.3f} "
            f"{kib['factored']:>9.1f} {kib['dense']:>9.1f}"
        )
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
