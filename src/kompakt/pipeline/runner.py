"""`kompakt pipeline`: train -> (compress) -> export -> deploy -> bench from one TOML file.

Everything lands under one output directory. Each stage writes `stage.json` with a key hashed
from its inputs (config section, upstream file hashes, kompakt version); a re-run skips stages
whose key is unchanged and whose outputs exist, unless force=True.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kompakt import __version__
from kompakt.errors import ConfigError

KNOWN = {
    "pipeline": {"out", "data", "data_root", "epochs", "batch_size", "seed", "optimizer", "lr"},
    "model": {"name", "model", "model_kwargs", "compress", "init_from", "epochs", "lr"},
    "export": {"tt_mode", "max_batch", "opset", "simplify"},
    "deploy": {"calib_samples", "calib_method", "int8_scheme", "targets", "max_accuracy_drop"},
    "bench": {"batches", "warmup_s", "min_runs", "duration_s", "rounds", "threads"},
}


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, name: str, status: str, seconds: float) -> None:
        self.rows.append(
            {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 2)}
        )
        print(f"[{stage}] {name}: {status} ({seconds:.1f} s)", file=sys.stderr)


def load_config(path: str | Path | None) -> dict:
    """The TOML config (the packaged default when `path` is None), checked for unknown keys."""
    from kompakt._io import parse_toml

    if path is None:
        text = resources.files("kompakt.pipeline").joinpath("default.toml").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read pipeline config {path}: {error.strerror}") from None
    config = parse_toml(text, f"pipeline config {path or 'default'}")
    for section in ("pipeline", "export", "deploy", "bench"):
        unknown = set(config.get(section, {})) - KNOWN[section]
        if unknown:
            raise ConfigError(f"unknown keys in [{section}]: {sorted(unknown)}")
    models = config.get("models", [])
    if not models:
        raise ConfigError("the pipeline config needs at least one [[models]] entry")
    for entry in models:
        unknown = set(entry) - KNOWN["model"]
        if unknown or "name" not in entry:
            raise ConfigError(f"[[models]] entries need 'name' and take {sorted(KNOWN['model'])}")
    return config


def _key(*parts: object) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _file_hash(path: Path) -> str:
    from kompakt._io import sha256_file

    return sha256_file(path)


def _cached(folder: Path, key: str, outputs: list[Path], force: bool) -> bool:
    stamp = folder / "stage.json"
    if force or not stamp.is_file() or not all(p.exists() for p in outputs):
        return False
    return json.loads(stamp.read_text()).get("key") == key


def _stamp(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").write_text(json.dumps({"key": key}) + "\n")


def run_pipeline(
    config_path: str | Path | None = None, out: str | None = None, force: bool = False
) -> dict:
    """Run every stage (skipping cached ones); returns the summary and writes summary.json."""
    from kompakt.deploy import BuildOptions, DeployConfig, build_bundle, list_backends
    from kompakt.export import ExportConfig, export_onnx
    from kompakt.runtime_bench.bench import run as run_bench
    from kompakt.train import TrainConfig, fit

    config = load_config(config_path)
    pipe = config.get("pipeline", {})
    root = Path(out or pipe.get("out", "runs/pipeline"))
    root.mkdir(parents=True, exist_ok=True)
    log = StageLog()
    started = time.perf_counter()
    checkpoints: dict[str, Path] = {}

    for entry in config["models"]:
        name = entry["name"]
        folder = root / "models" / name
        upstream = entry.get("init_from")
        if upstream and upstream not in checkpoints:
            raise ConfigError(f"model {name!r}: init_from {upstream!r} must name an earlier model")
        settings = {
            "model": entry.get("model", "lenet5"),
            "data": pipe.get("data", "digits"),
            "data_root": pipe.get("data_root"),
            "epochs": entry.get("epochs", pipe.get("epochs", 3)),
            "batch_size": pipe.get("batch_size", 64),
            "seed": pipe.get("seed", 0),
            "optimizer": pipe.get("optimizer", "sgd"),
            "lr": entry.get("lr", pipe.get("lr")),
            "compress": entry.get("compress"),
            "model_kwargs": entry.get("model_kwargs", {}),
            "init_from": str(checkpoints[upstream]) if upstream else None,
        }
        key = _key("train", settings, _file_hash(checkpoints[upstream]) if upstream else None)
        ckpt = folder / "best.pt"
        t0 = time.perf_counter()
        if _cached(folder, key, [ckpt], force):
            log.add("train", name, "cached", time.perf_counter() - t0)
        else:
            fit(TrainConfig(out=str(folder), quiet=True, **settings))
            _stamp(folder, key)
            log.add("train", name, "done", time.perf_counter() - t0)
        checkpoints[name] = ckpt

    export_settings = {"tt_mode": "auto", "max_batch": 64, **config.get("export", {})}
    onnx_files: dict[str, Path] = {}
    for name, ckpt in checkpoints.items():
        folder = root / "onnx" / name
        path = folder / "model.onnx"
        key = _key("export", export_settings, _file_hash(ckpt))
        t0 = time.perf_counter()
        if _cached(folder, key, [path], force):
            log.add("export", name, "cached", time.perf_counter() - t0)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            export_onnx(ckpt, path, ExportConfig(**export_settings))
            _stamp(folder, key)
            log.add("export", name, "done", time.perf_counter() - t0)
        onnx_files[name] = path

    deploy = config.get("deploy", {})
    available = {r["name"] for r in list_backends() if r["available"]}
    targets = deploy.get("targets", [{"backend": "onnxruntime", "precision": "fp32"}])
    bundles: list[Path] = []
    bundle_models: dict[str, str] = {}
    for name, onnx_path in onnx_files.items():
        for target in targets:
            backend, precision = target["backend"], target.get("precision", "fp32")
            label = f"{name}-{backend}-{precision}"
            if backend not in available:
                if target.get("optional"):
                    log.add("deploy", label, f"skipped: {backend} unavailable", 0.0)
                    continue
                raise ConfigError(
                    f"deploy target {backend} is unavailable here (see "
                    "`kompakt deploy --list-backends`); mark it optional = true"
                )
            folder = root / "bundles" / label
            settings = {
                "backend": backend,
                "precision": precision,
                "calib_samples": deploy.get("calib_samples", 256),
                "calib_method": deploy.get("calib_method", "minmax"),
                "int8_scheme": target.get("int8_scheme", deploy.get("int8_scheme", "portable")),
                "max_accuracy_drop": deploy.get("max_accuracy_drop"),
                "calib_data": pipe.get("data"),
                "data_root": pipe.get("data_root"),
            }
            key = _key("deploy", settings, _file_hash(onnx_path))
            stamp_dir = root / "bundles" / f".{label}.stage"
            t0 = time.perf_counter()
            if _cached(stamp_dir, key, [folder / "kompakt.json"], force):
                log.add("deploy", label, "cached", time.perf_counter() - t0)
            else:
                build_bundle(
                    onnx_path,
                    folder,
                    DeployConfig(force=True, **settings),
                    BuildOptions(
                        threads=config.get("bench", {}).get("threads"),
                        max_batch=export_settings["max_batch"],
                    ),
                )
                _stamp(stamp_dir, key)
                log.add("deploy", label, "done", time.perf_counter() - t0)
            bundles.append(folder)
            bundle_models[folder.name] = name

    bench = {
        "batches": [1, 32],
        "warmup_s": 0.5,
        "min_runs": 50,
        "duration_s": 2.0,
        "rounds": 2,
        "threads": None,
        **config.get("bench", {}),
    }
    report = root / "report"
    manifests = [_file_hash(b / "kompakt.json") for b in bundles]
    key = _key("bench", bench, manifests, pipe.get("data"))
    t0 = time.perf_counter()
    if _cached(report, key, [report / "results.json"], force):
        results = json.loads((report / "results.json").read_text())
        log.add("bench", "all bundles", "cached", time.perf_counter() - t0)
    else:
        batches = tuple(bench.pop("batches"))
        results = run_bench(
            bundles,
            batches,
            data=pipe.get("data"),
            data_root=pipe.get("data_root"),
            report=report,
            quiet=True,
            **bench,
        )
        _stamp(report, key)
        log.add("bench", "all bundles", "done", time.perf_counter() - t0)

    summary = summarise(results, checkpoints, bundle_models)
    out_summary = {
        "config": config,
        "stages": log.rows,
        "summary": summary,
        "wall_s": round(time.perf_counter() - started, 1),
        "out": str(root),
    }
    (root / "summary.json").write_text(json.dumps(out_summary, indent=2, default=str) + "\n")
    return out_summary


def summarise(results: dict, checkpoints: dict[str, Path], bundle_models: dict[str, str]) -> list:
    """One row per bundle: parameters, file size, latency, peak RSS, accuracy."""
    from kompakt.models.checkpoint import load_checkpoint

    params = {}
    for name, ckpt in checkpoints.items():
        state = load_checkpoint(ckpt)["state_dict"]
        params[name] = sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
    rows = []
    for b in results["bundles"]:
        model = bundle_models.get(b["name"])
        latency = {k: round(v["p50_ms"], 3) for k, v in b["latency"].items()}
        rows.append(
            {
                "bundle": b["name"],
                "params": params.get(model),
                "artefact_kib": round(b["artefact_bytes"] / 1024, 1),
                "p50_ms": latency,
                "peak_rss_mib": b.get("peak_rss_mib"),
                "top1": (b.get("accuracy") or {}).get("top1"),
            }
        )
    return rows


def format_summary(rows: list[dict]) -> str:
    batches = sorted({int(k) for r in rows for k in r["p50_ms"]})
    head = (
        f"{'bundle':<32} {'params':>11} {'file KiB':>9} "
        + " ".join(f"{f'p50 b{b} ms':>11}" for b in batches)
        + f" {'peak RSS':>9} {'top-1':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = " ".join(f"{r['p50_ms'].get(str(b), float('nan')):>11.3f}" for b in batches)
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        rss = f"{r['peak_rss_mib']:.1f}" if r["peak_rss_mib"] else "-"
        top1 = f"{100 * r['top1']:.2f}%" if r["top1"] is not None else "-"
        lines.append(
            f"{r['bundle']:<32} {params:>11} {r['artefact_kib']:>9.1f} {lat} {rss:>9} {top1:>7}"
        )
    return "\n".join(lines)
