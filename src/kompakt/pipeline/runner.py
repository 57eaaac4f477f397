"""`kompakt pipeline`: train -> (compress) -> export -> deploy -> bench from one TOML file.

Everything lands under one output directory. Each stage writes `stage.json` with a key hashed
from its inputs (config section, upstream file hashes, kompakt version); a re-run skips stages
whose key is unchanged and whose outputs exist, unless force=True.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kompakt import __version__, options
from kompakt._io import atomic_write_text, sha256_file
from kompakt.errors import ConfigError

# [[models]] keys besides TrainConfig's own: the entry's name
MODEL_KEYS = {"name"}
# a deploy target: the backend and precision, optional = true to skip it where unavailable, and
# any DeployConfig field to override [deploy] for this target
TARGET_KEYS = {"optional"}


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: one config per stage, each the dataclass its command takes.

    [pipeline] holds TrainConfig defaults for every model (out is the pipeline's root); each
    [[models]] entry is a name plus TrainConfig overrides (init_from names an earlier model);
    [export] is an ExportConfig, [deploy] a DeployConfig plus `targets`, [bench] a BenchConfig.
    """

    out: str
    train: dict  # TrainConfig keys shared by every model
    models: list[dict]
    export: dict
    deploy: dict
    targets: list[dict]
    bench: dict


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, name: str, status: str, seconds: float) -> None:
        self.rows.append(
            {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 2)}
        )
        print(f"[{stage}] {name}: {status} ({seconds:.1f} s)", file=sys.stderr)


def load_config(path: str | Path | None) -> dict:
    """The TOML config (the packaged default when `path` is None), every section checked
    against the dataclass its stage takes (unknown keys and wrong types refused)."""
    from kompakt._io import parse_toml

    if path is None:
        text = resources.files("kompakt.pipeline").joinpath("default.toml").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read pipeline config {path}: {error.strerror}") from None
    config = parse_toml(text, f"pipeline config {path or 'default'}")
    parse_config(config)
    return config


def parse_config(config: dict) -> PipelineConfig:
    """Check a pipeline config dict against the stage dataclasses; return it typed."""
    from kompakt.deploy import BuildOptions, DeployConfig
    from kompakt.export import ExportConfig
    from kompakt.runtime_bench.bench import BenchConfig
    from kompakt.train import TrainConfig

    config.update({k: options.underscored(v) for k, v in config.items() if isinstance(v, dict)})
    config["models"] = [options.underscored(m) for m in config.get("models", [])]
    if isinstance(config.get("deploy", {}).get("targets"), list):
        config["deploy"]["targets"] = [options.underscored(t) for t in config["deploy"]["targets"]]
    known = {"pipeline", "models", "export", "deploy", "bench"}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)}; valid: {sorted(known)}")
    pipe = dict(config.get("pipeline", {}))
    out = pipe.pop("out", "runs/pipeline")
    options.build(TrainConfig, pipe, "[pipeline]")
    models = config.get("models", [])
    if not models:
        raise ConfigError("the pipeline config needs at least one [[models]] entry")
    for entry in models:
        if "name" not in entry:
            raise ConfigError("every [[models]] entry needs a name")
        options.check_keys(entry, TrainConfig, f"[[models]] {entry['name']!r}", MODEL_KEYS)
    export = dict(config.get("export", {}))
    options.build(ExportConfig, export, "[export]")
    deploy = dict(config.get("deploy", {}))
    targets = deploy.pop("targets", [{"backend": "onnxruntime", "precision": "fp32"}])
    options.check_keys(deploy, (DeployConfig, BuildOptions), "[deploy]")
    for target in targets:
        options.check_keys(target, DeployConfig, "a [deploy] target", TARGET_KEYS)
    bench = dict(config.get("bench", {}))
    options.build(BenchConfig, bench, "[bench]")
    return PipelineConfig(str(out), pipe, models, export, deploy, targets, bench)


def _key(*parts: object) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def data_fingerprint(root: str | None) -> str | None:
    """A hash of every data file under `root` (path, size and content), so regenerated or
    edited data re-runs the stages that read it; None for embedded datasets."""
    if not root or not Path(root).is_dir():
        return None
    from kompakt._io import sha256_file

    entries = [
        (p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p))
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _cached(folder: Path, key: str, outputs: list[Path], force: bool) -> bool:
    stamp = folder / "stage.json"
    if force or not stamp.is_file() or not all(p.exists() for p in outputs):
        return False
    return json.loads(stamp.read_text()).get("key") == key


def _stamp(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").write_text(json.dumps({"key": key}) + "\n")


@dataclass
class Step:
    """One unit of a stage: its label, where its cache stamp lives, the hash of its inputs, the
    files it must leave, and the work."""

    stage: str
    label: str
    stamp_dir: Path
    key: str
    outputs: list[Path]
    work: Callable[[], object]


def _run_steps(steps: list[Step], log: StageLog, force: bool) -> None:
    """Run each step unless its key and outputs say it is already done (the stage cache)."""
    for step in steps:
        t0 = time.perf_counter()
        if _cached(step.stamp_dir, step.key, step.outputs, force):
            log.add(step.stage, step.label, "cached", time.perf_counter() - t0)
            continue
        step.work()
        _stamp(step.stamp_dir, step.key)
        log.add(step.stage, step.label, "done", time.perf_counter() - t0)


def run_pipeline(
    config_path: str | Path | None = None, out: str | None = None, force: bool = False
) -> dict:
    """Run every stage (skipping cached ones); returns the summary and writes summary.json."""
    from kompakt.deploy import BuildOptions, DeployConfig, build_bundle, list_backends
    from kompakt.export import ExportConfig, export_checkpoint
    from kompakt.runtime_bench.bench import BenchConfig, run_config
    from kompakt.train import TrainConfig, fit

    config = load_config(config_path)
    plan = parse_config(config)
    root = Path(out or plan.out)
    root.mkdir(parents=True, exist_ok=True)
    log = StageLog()
    started = time.perf_counter()
    data_hash = data_fingerprint(plan.train.get("data_root"))

    # train: one step per [[models]] entry, in order (init_from names an earlier one)
    checkpoints: dict[str, Path] = {}
    train_defaults = {"epochs": 3, **plan.train}
    for entry in plan.models:
        name = entry["name"]
        folder = root / "models" / name
        upstream = entry.get("init_from")
        if upstream and upstream not in checkpoints:
            raise ConfigError(f"model {name!r}: init_from {upstream!r} must name an earlier model")
        settings = {**train_defaults, **{k: v for k, v in entry.items() if k != "name"}}
        settings["init_from"] = str(checkpoints[upstream]) if upstream else None
        train_config = options.build(
            TrainConfig,
            {**settings, "out": str(folder), "quiet": False},  # one line per epoch, with ETA
            f"model {name!r}",
        )
        upstream_hash = sha256_file(checkpoints[upstream]) if upstream else None
        step = Step(
            "train",
            name,
            folder,
            _key("train", settings, upstream_hash, data_hash),
            [folder / "best.pt"],
            lambda c=train_config: fit(c),
        )
        _run_steps([step], log, force)
        checkpoints[name] = folder / "best.pt"

    # export: one step per checkpoint
    export_config = ExportConfig(**{"tt_mode": "auto", "max_batch": 64, **plan.export})
    onnx_files = {name: root / "onnx" / name / "model.onnx" for name in checkpoints}
    _run_steps(
        [
            Step(
                "export",
                name,
                path.parent,
                _key("export", dataclasses.asdict(export_config), sha256_file(ckpt)),
                [path],
                lambda c=ckpt, p=path: export_checkpoint(c, p, export_config),
            )
            for (name, ckpt), path in zip(checkpoints.items(), onnx_files.values(), strict=True)
        ],
        log,
        force,
    )

    # deploy: one step per (model, target)
    available = {r["name"] for r in list_backends() if r["available"]}
    build_keys = {f.name for f in dataclasses.fields(BuildOptions)}
    steps: list[Step] = []
    bundles: list[Path] = []
    bundle_models: dict[str, str] = {}
    for name, onnx_path in onnx_files.items():
        for target in plan.targets:
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
            settings = {
                "calib_data": plan.train.get("data", "digits"),
                "data_root": plan.train.get("data_root"),
                **{k: v for k, v in plan.deploy.items() if k not in build_keys},
                **{k: v for k, v in target.items() if k != "optional"},
                "force": True,
            }
            deploy_config = options.build(DeployConfig, settings, f"deploy target {label}")
            build_options = BuildOptions(
                **{
                    "threads": plan.bench.get("threads"),
                    "max_batch": export_config.max_batch,
                    **{k: v for k, v in plan.deploy.items() if k in build_keys},
                }
            )
            folder = root / "bundles" / label
            steps.append(
                Step(
                    "deploy",
                    label,
                    root / "bundles" / f".{label}.stage",
                    _key(
                        "deploy",
                        settings,
                        dataclasses.asdict(build_options),
                        sha256_file(onnx_path),
                        data_hash,
                    ),
                    [folder / "kompakt.json"],
                    lambda o=onnx_path, f=folder, c=deploy_config, b=build_options: build_bundle(
                        o, f, c, b
                    ),
                )
            )
            bundles.append(folder)
            bundle_models[folder.name] = name
    _run_steps(steps, log, force)

    # bench: one step over every bundle, interleaved
    report = root / "report"
    bench_config = BenchConfig(
        **{
            "batches": (1, 32),
            "warmup_s": 0.5,
            "min_runs": 50,
            "duration_s": 2.0,
            "rounds": 2,
            **plan.bench,
            "data": plan.train.get("data"),
            "data_root": plan.train.get("data_root"),
            "report": str(report),
            "quiet": False,
        }
    )
    manifests = [sha256_file(b / "kompakt.json") for b in bundles]
    _run_steps(
        [
            Step(
                "bench",
                "all bundles",
                report,
                _key("bench", dataclasses.asdict(bench_config), manifests, data_hash),
                [report / "results.json"],
                lambda: run_config(bundles, bench_config),
            )
        ],
        log,
        force,
    )
    results = json.loads((report / "results.json").read_text())

    summary = summarise(results, checkpoints, bundle_models)
    out_summary = {
        "config": config,
        "stages": log.rows,
        "summary": summary,
        "wall_s": round(time.perf_counter() - started, 1),
        "out": str(root),
    }
    atomic_write_text(root / "summary.json", json.dumps(out_summary, indent=2, default=str) + "\n")
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
