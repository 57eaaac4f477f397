"""Compress a trained model and keep its accuracy (issue 14), recipes side by side.

garipov-conv-fc trained on mnist5k (dense baseline), then TT on every conv and FC layer at
ranks 8 (171x fewer parameters in the replaced layers), fine-tuned by:
- "main before the fix": `kompakt train --init-from --compress tt:ranks=8 --lr 0.01` run by the
  code of the commit given by --old-commit (a git worktree), the path that lost the model;
- "labels only": today's trainer, warm-up 0.3 epochs + per-batch cosine, peak lr 0.02, no
  teacher, no output fitting;
- "kompakt compress": the defaults (output-aware init on 512 samples, layers fitted in order,
  BatchNorm re-estimated; distillation with feature matching), over --seeds seeds, and without
  feature matching;
- gradual compression: `--steps 3` (ranks 32 -> 16 -> 8, one epoch each);
- "output-aware init, no fine-tune" and "TT-SVD, no fine-tune" (0 epochs);
- "TT from scratch": garipov-tt-conv-tt-fc trained for the same total epochs;
- rank budgets: `kompakt compress --ratio R` (R = 10, 30, 100) after 0 and 3 epochs;
- resnet18-cifar (width 0.25) trained on mnist5k, TT-conv on its convs (`--ranks`), the
  parameter reduction of the replaced layers stated;
- a model defined in this file (registered as a plugin, not in the zoo), trained and
  compressed through the Python API (`fit`, `compress_checkpoint`).
Each fine-tuned recipe after 1 and after 3 epochs (separate runs: a 1-epoch run has its own
schedule). Test accuracy (mnist5k test split), wall time; results/compress_trained.json.
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


def run(cmd: list[str], cwd: Path = ROOT, env: dict | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    out = json.loads("\n".join(lines[lines.index("{") :])) if "{" in lines else {}
    return {**out, "wall_s": round(time.perf_counter() - start, 1)}


def register_user_model() -> str:
    """A small CNN of the kind a user brings: not in the zoo, registered from this file."""
    from torch import nn

    from kompakt.models.registry import MODELS

    name = "bench-user-cnn"
    if name in MODELS:
        return name

    @MODELS.register(name, help="compress_trained.py's own model (two convs, two FC)")
    class UserCNN(nn.Module):
        def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(64 * (image_size // 4) ** 2, 512),
                nn.ReLU(),
                nn.Linear(512, num_classes),
            )

        def forward(self, x):
            return self.body(x)

    return name


def in_process(fn) -> dict:
    start = time.perf_counter()
    out = fn()
    return {**out, "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--resnet-ranks", type=int, default=8)
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds of the default recipe's 171x rows"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the results from the rows finished so far (WORK/partial.json), run none",
    )
    parser.add_argument("--old-commit", default="cde7069")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_compress"))
    args = parser.parse_args(argv)
    import os

    from kompakt.machine import describe_machine

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kompakt = [sys.executable, "-m", "kompakt.cli"]
    results_path = work / "partial.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else {}

    order: list[str] = []  # the table follows this file's order, older rows after

    def record(name: str, fn) -> dict:
        order.append(name)
        if args.report_only:
            return rows.get(name, {})
        if name not in rows:
            rows[name] = fn()
            results_path.write_text(json.dumps(rows, indent=2))
        print(f"{name}: test {rows[name].get('test')} ({rows[name].get('wall_s')} s)", flush=True)
        return rows[name]

    def compress(source: str, out: str, *options: str) -> dict:
        """`kompakt compress SOURCE OPTIONS -o WORK/OUT --quiet --json`."""
        command = [*kompakt, "compress", source, *options]
        return run([*command, "-o", str(work / out), "--quiet", "--json"])

    dense = work / "dense"
    record(
        "dense baseline",
        lambda: run(
            [
                *kompakt,
                "train",
                "--model",
                "garipov-conv-fc",
                "--data",
                "mnist5k",
                "--epochs",
                str(args.base_epochs),
                "-o",
                str(dense),
                "--quiet",
                "--json",
            ]
        ),
    )
    ckpt = str(dense / "best.pt")
    spec = f"tt:ranks={args.ranks}"

    old = Path("/tmp/kompakt-old-" + args.old_commit)
    if not old.is_dir() and not args.report_only:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), args.old_commit], cwd=ROOT, check=True
        )
    old_env = {**os.environ, "PYTHONPATH": str(old / "src")}
    for epochs in (1, 3):
        record(
            f"main before the fix, {epochs} ep",
            lambda e=epochs: run(
                [
                    sys.executable,
                    "-m",
                    "kompakt.cli",
                    "train",
                    "--init-from",
                    ckpt,
                    "--compress",
                    spec,
                    "--data",
                    "mnist5k",
                    "--epochs",
                    str(e),
                    "--lr",
                    "0.01",
                    "-o",
                    str(work / f"old-{e}"),
                    "--quiet",
                    "--json",
                ],
                env=old_env,
            ),
        )
        record(
            f"labels only (warm-up, cosine per batch), {epochs} ep",
            lambda e=epochs: compress(
                ckpt,
                f"labels-{e}",
                "--ranks",
                str(args.ranks),
                "--calib-samples",
                "0",
                "--no-distill",
                "--finetune-epochs",
                str(e),
            ),
        )
        for seed in range(args.seeds):
            suffix = f", seed {seed}" if seed else ""
            record(
                f"kompakt compress (output-aware init + distillation), {epochs} ep{suffix}",
                lambda e=epochs, s=seed: compress(
                    ckpt,
                    f"compress-{e}" if not s else f"compress-{e}-s{s}",
                    "--ranks",
                    str(args.ranks),
                    "--finetune-epochs",
                    str(e),
                    "--seed",
                    str(s),
                ),
            )
        record(
            f"kompakt compress without feature matching, {epochs} ep",
            lambda e=epochs: compress(
                ckpt,
                f"nofeatures-{e}",
                "--ranks",
                str(args.ranks),
                "--finetune-epochs",
                str(e),
                "--distill-features",
                "0",
            ),
        )
    record(
        "kompakt compress --steps 3 (ranks 32 -> 16 -> 8, 1 ep each), 3 ep",
        lambda: compress(
            ckpt, "gradual-3", "--ranks", str(args.ranks), "--steps", "3", "--finetune-epochs", "3"
        ),
    )
    record(
        "TT-SVD only, 0 ep",
        lambda: compress(
            ckpt,
            "svd-0",
            "--ranks",
            str(args.ranks),
            "--calib-samples",
            "0",
            "--finetune-epochs",
            "0",
        ),
    )
    record(
        "output-aware init, 0 ep",
        lambda: compress(ckpt, "aware-0", "--ranks", str(args.ranks), "--finetune-epochs", "0"),
    )
    record(
        f"TT from scratch (garipov-tt-conv-tt-fc), {args.base_epochs + 3} ep",
        lambda: run(
            [
                *kompakt,
                "train",
                "--model",
                "garipov-tt-conv-tt-fc",
                "--data",
                "mnist5k",
                "--epochs",
                str(args.base_epochs + 3),
                "-o",
                str(work / "scratch"),
                "--quiet",
                "--json",
            ]
        ),
    )

    def ratio_row(ratio: int, epochs: int) -> None:
        record(
            f"kompakt compress --ratio {ratio}, {epochs} ep",
            lambda: compress(
                ckpt,
                f"ratio{ratio}-{epochs}",
                "--ratio",
                str(ratio),
                "--finetune-epochs",
                str(epochs),
            ),
        )

    for ratio in (10, 30, 100):  # no fine-tune first: they are quick
        ratio_row(ratio, 0)
    resnet = work / "resnet18"
    record(
        "resnet18-cifar (width 0.25) dense baseline",
        lambda: run(
            [
                *kompakt,
                "train",
                "--model",
                "resnet18-cifar",
                "--model-arg",
                "width=0.25",
                "--data",
                "mnist5k",
                "--epochs",
                str(args.base_epochs),
                "-o",
                str(resnet),
                "--quiet",
                "--json",
            ]
        ),
    )
    for epochs in (0, 3):
        record(
            f"resnet18-cifar TT-conv ranks {args.resnet_ranks}, {epochs} ep",
            lambda e=epochs: compress(
                str(resnet / "best.pt"),
                f"resnet18-tt-{e}",
                "--ranks",
                str(args.resnet_ranks),
                "--finetune-epochs",
                str(e),
            ),
        )

    from kompakt.train import TrainConfig, fit
    from kompakt.train.compress import CompressConfig, compress_checkpoint

    user = register_user_model()
    user_dir = work / "user-model"
    record(
        "model defined in this file, dense baseline",
        lambda: in_process(
            lambda: fit(
                TrainConfig(
                    model=user,
                    data="mnist5k",
                    epochs=args.base_epochs,
                    out=str(user_dir),
                    quiet=True,
                )
            )
        ),
    )
    for epochs in (0, 3):
        record(
            f"model defined in this file, kompakt compress --ratio 30, {epochs} ep",
            lambda e=epochs: in_process(
                lambda: compress_checkpoint(
                    str(user_dir / "best.pt"),
                    CompressConfig(
                        ratio=30, finetune_epochs=e, out=str(work / f"user-tt-{e}"), quiet=True
                    ),
                )
            ),
        )

    for ratio in (10, 30, 100):
        ratio_row(ratio, 3)

    def ratio_to_baseline(name: str, row: dict) -> float | None:
        """Whole-model parameters of the dense baseline this row came from / this row's."""
        if name.startswith("resnet18"):
            base = rows.get("resnet18-cifar (width 0.25) dense baseline", {})
        elif name.startswith("model defined"):
            base = rows.get("model defined in this file, dense baseline", {})
        else:
            base = rows["dense baseline"]
        if not row.get("params") or not base.get("params"):
            return None
        return round(base["params"] / row["params"], 2)

    seed_summary = {}
    for epochs in (1, 3):
        label = f"kompakt compress (output-aware init + distillation), {epochs} ep"
        accs = [
            rows[name]["test"]["accuracy"]
            for name in rows
            if name == label or name.startswith(label + ", seed ")
        ]
        if len(accs) > 1:
            seed_summary[label] = {
                "mean": statistics.mean(accs),
                "std": statistics.stdev(accs),
                "seeds": len(accs),
            }
    out = {
        "machine": describe_machine(("onnxruntime",)),
        "seed_summary": seed_summary,
        "settings": {
            "base_epochs": args.base_epochs,
            "ranks": args.ranks,
            "resnet_ranks": args.resnet_ranks,
            "seeds": args.seeds,
            "data": "mnist5k",
        },
        "rows": [
            {
                "recipe": name,
                "test_accuracy": (row.get("test") or {}).get("accuracy"),
                "params": row.get("params"),
                "model_params_ratio": ratio_to_baseline(name, row),
                "wall_s": row.get("wall_s"),
            }
            for name, row in sorted(
                rows.items(), key=lambda item: order.index(item[0]) if item[0] in order else 1e9
            )
        ],
    }
    (HERE / "results" / "compress_trained.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
