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

from kompakt import __version__, measure, options
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
    baseline: str  # the model every other one is compared with (default: the first)
    train: dict  # TrainConfig keys shared by every model
    models: list[dict]
    export: dict
    deploy: dict
    targets: list[dict]
    bench: dict
    optimize: dict | None = None  # OptimizeConfig keys + "from" (the model to optimize)


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
    known = {"pipeline", "models", "export", "deploy", "bench", "optimize"}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)}; valid: {sorted(known)}")
    pipe = dict(config.get("pipeline", {}))
    out = pipe.pop("out", "runs/pipeline")
    baseline = pipe.pop("baseline", None)
    options.build(TrainConfig, pipe, "[pipeline]")
    models = config.get("models", [])
    if not models:
        raise ConfigError("the pipeline config needs at least one [[models]] entry")
    for entry in models:
        if "name" not in entry:
            raise ConfigError("every [[models]] entry needs a name")
        options.check_keys(entry, TrainConfig, f"[[models]] {entry['name']!r}", MODEL_KEYS)
    names = [entry["name"] for entry in models]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"[pipeline] baseline {baseline!r} is not a [[models]] name: {names}")
    export = dict(config.get("export", {}))
    options.build(ExportConfig, export, "[export]")
    deploy = dict(config.get("deploy", {}))
    targets = deploy.pop("targets", [{"backend": "onnxruntime", "precision": "fp32"}])
    options.check_keys(deploy, (DeployConfig, BuildOptions), "[deploy]")
    for target in targets:
        options.check_keys(target, DeployConfig, "a [deploy] target", TARGET_KEYS)
    bench = dict(config.get("bench", {}))
    options.build(BenchConfig, bench, "[bench]")
    optimize = _parse_optimize(config.get("optimize"), names, baseline)
    return PipelineConfig(
        str(out), baseline, pipe, models, export, deploy, targets, bench, optimize
    )


def _parse_optimize(section: dict | None, names: list[str], baseline: str) -> dict | None:
    """[optimize]: OptimizeConfig keys plus `from`, the model it starts from (the baseline)."""
    if section is None:
        return None
    from kompakt.optimize import OptimizeConfig

    section = dict(section)
    source = section.pop("from", baseline)
    if source not in names:
        raise ConfigError(f"[optimize] from {source!r} is not a [[models]] name: {names}")
    options.build(OptimizeConfig, {**section, "out": "x"}, "[optimize]")
    return {"from": source, **section}


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
    if plan.optimize:
        bundle, ckpt = _optimize_step(plan, root, checkpoints, log, force, data_hash)
        bundles.append(bundle)
        bundle_models[bundle.name] = "optimized"
        checkpoints["optimized"] = ckpt

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
    # parity vs PyTorch: each bundle against the checkpoint it was exported from
    sources = {label: str(checkpoints[model]) for label, model in bundle_models.items()}
    _run_steps(
        [
            Step(
                "bench",
                "all bundles",
                report,
                _key(
                    "bench",
                    dataclasses.asdict(bench_config),
                    manifests,
                    data_hash,
                    {k: sha256_file(v) for k, v in sources.items()},
                ),
                [report / "results.json"],
                lambda: run_config(bundles, bench_config, sources),
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
        "baseline": plan.baseline,
        "summary": summary,
        "ratios": ratios(summary, plan.baseline),
        "training": training_summary(checkpoints),
        "machine": results["machine"],
        "wall_s": round(time.perf_counter() - started, 1),
        "out": str(root),
    }
    keep_run(root, report, out_summary)
    return out_summary


def _optimize_step(plan, root: Path, checkpoints: dict, log, force: bool, data_hash):
    """`kompakt optimize` of the [optimize] model, cached like every step; returns the chosen
    bundle and the checkpoint it was built from, which then join the bench as "optimized"."""
    from kompakt.optimize import OptimizeConfig, optimize

    settings = {k: v for k, v in plan.optimize.items() if k != "from"}
    source = checkpoints[plan.optimize["from"]]
    folder = root / "optimize"
    config = options.build(
        OptimizeConfig,
        {"data": plan.train.get("data"), "data_root": plan.train.get("data_root"), **settings}
        | {"out": str(folder)},
        "[optimize]",
    )
    key = _key("optimize", settings, sha256_file(source), data_hash)
    _run_steps(
        [
            Step(
                "optimize",
                "optimized",
                folder,
                key,
                [folder / "optimize.json"],
                lambda: optimize(source, config),
            )
        ],
        log,
        force,
    )
    summary = json.loads((folder / "optimize.json").read_text())
    chosen = next(r for r in summary["rounds"] if r["round"] == summary["chosen_round"])
    return Path(summary["bundle"]), Path(chosen["checkpoint"])


def keep_run(root: Path, report: Path, out_summary: dict) -> Path:
    """summary.json and report/pipeline.md for this run, and a copy of both plus the bench
    report under history/<UTC time>/, so a re-run never overwrites an earlier run's numbers."""
    import shutil
    from datetime import datetime, timezone

    text = json.dumps(out_summary, indent=2, default=str) + "\n"
    atomic_write_text(root / "summary.json", text)
    atomic_write_text(report / "pipeline.md", render_report(out_summary))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    kept = root / "history" / stamp
    shutil.copytree(report, kept / "report")
    atomic_write_text(kept / "summary.json", text)
    return kept


def summarise(results: dict, checkpoints: dict[str, Path], bundle_models: dict[str, str]) -> list:
    """One row per bundle: model, parameters, file size, latency (p50 and spread), memory,
    accuracy and parity vs the PyTorch checkpoint it came from."""
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
        parity = b.get("parity") or {}
        rows.append(
            {
                "bundle": b["name"],
                "model": model,
                "backend": b["backend"],
                "precision": b["precision"],
                "params": params.get(model),
                "artefact_kib": round(b["artefact_bytes"] / 1024, 1),
                "p50_ms": {k: round(v["p50_ms"], 3) for k, v in b["latency"].items()},
                "std_ms": {k: round(v["std_ms"], 3) for k, v in b["latency"].items()},
                "peak_rss_mib": b.get("peak_rss_mib"),
                "rss_delta_mib": b.get("rss_delta_mib"),
                "top1": (b.get("accuracy") or {}).get("top1"),
                "parity_max_rel": parity.get("max_rel"),
                "parity_top1_agreement": parity.get("top1_agreement"),
            }
        )
    return rows


def _ratio(base: float | None, value: float | None) -> float | None:
    found = measure.ratio(base, value)
    return round(found, 2) if found is not None else None


def ratios(rows: list[dict], baseline: str) -> list[dict]:
    """Every other model's bundle against the baseline model's bundle of the same backend and
    precision: how many times faster (per batch), smaller, leaner; accuracy change in points."""
    base = {(r["backend"], r["precision"]): r for r in rows if r["model"] == baseline}
    out = []
    for r in rows:
        b = base.get((r["backend"], r["precision"]))
        if b is None or r["model"] == baseline:
            continue
        top1 = None
        if r["top1"] is not None and b["top1"] is not None:
            top1 = round(100 * (r["top1"] - b["top1"]), 2)
        out.append(
            {
                "bundle": r["bundle"],
                "vs": b["bundle"],
                "speedup": {k: _ratio(b["p50_ms"].get(k), v) for k, v in r["p50_ms"].items()},
                "smaller_file": _ratio(b["artefact_kib"], r["artefact_kib"]),
                "less_model_memory": _ratio(b["rss_delta_mib"], r["rss_delta_mib"]),
                "fewer_params": _ratio(b["params"], r["params"]),
                "top1_change_points": top1,
            }
        )
    return out


def training_summary(checkpoints: dict[str, Path]) -> list[dict]:
    """Per model: epochs run, training time, best validation and the epoch it came from."""
    rows = []
    for name, ckpt in checkpoints.items():
        path = ckpt.parent / "metrics.jsonl"
        epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not epochs:
            continue
        metric = "val_accuracy" if "val_accuracy" in epochs[0] else "val_loss"
        pick = max if metric == "val_accuracy" else min
        best = pick(epochs, key=lambda row: row.get(metric, float("nan")))
        rows.append(
            {
                "model": name,
                "epochs": len(epochs),
                "train_s": round(sum(row.get("time_s", 0.0) for row in epochs), 1),
                "best_epoch": best["epoch"],
                metric: best.get(metric),
            }
        )
    return rows


def _cell(value: object, fmt: str = "", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{suffix}"


def format_summary(rows: list[dict], ratio_rows: list[dict] | None = None) -> str:
    batches = sorted({int(k) for r in rows for k in r["p50_ms"]})
    head = (
        f"{'bundle':<32} {'params':>11} {'file KiB':>9} "
        + " ".join(f"{f'p50 b{b} ms':>11}" for b in batches)
        + f" {'peak RSS':>9} {'top-1':>7} {'parity':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = " ".join(f"{r['p50_ms'].get(str(b), float('nan')):>11.3f}" for b in batches)
        params = _cell(r["params"], ",")
        rss = _cell(r["peak_rss_mib"], ".1f")
        top1 = _cell(None if r["top1"] is None else 100 * r["top1"], ".2f", "%")
        parity = _cell(r.get("parity_max_rel"), ".1e")
        lines.append(
            f"{r['bundle']:<32} {params:>11} {r['artefact_kib']:>9.1f} {lat} {rss:>9} "
            f"{top1:>7} {parity:>8}"
        )
    if ratio_rows:
        lines += ["", "vs the baseline (same backend and precision): x = times better"]
        for r in ratio_rows:
            speed = ", ".join(f"b{k} {_cell(v, '.2f', 'x')}" for k, v in r["speedup"].items())
            lines.append(
                f"{r['bundle']:<32} faster {speed}; file {_cell(r['smaller_file'], '.1f', 'x')}"
                f"; model memory {_cell(r['less_model_memory'], '.2f', 'x')}; params "
                f"{_cell(r['fewer_params'], '.1f', 'x')}; top-1 "
                f"{_cell(r['top1_change_points'], '+.2f', ' points')}"
            )
    return "\n".join(lines)


def render_report(summary: dict) -> str:
    """report/pipeline.md: the comparison people came for, generated (never hand-written)."""
    m = summary["machine"]
    rows, ratio_rows = summary["summary"], summary["ratios"]
    batches = sorted({int(k) for r in rows for k in r["p50_ms"]})
    lines = [
        "# kompakt pipeline report",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB, {m['os']}. "
        f"Pipeline wall time {summary['wall_s']} s. Baseline model: `{summary['baseline']}`.",
        "",
        "## Bundles",
        "",
        "| bundle | parameters | file KiB | "
        + " | ".join(f"p50 b{b} ms (± std)" for b in batches)
        + " | peak RSS MiB | RSS over runtime MiB | top-1 | parity vs PyTorch (max rel) |",
        "|---|---|---|" + "---|" * len(batches) + "---|---|---|---|",
    ]
    for r in rows:
        lat = " | ".join(
            f"{r['p50_ms'][str(b)]:.3f} ± {r['std_ms'][str(b)]:.3f}"
            if str(b) in r["p50_ms"]
            else "–"
            for b in batches
        )
        top1 = _cell(None if r["top1"] is None else 100 * r["top1"], ".2f", " %")
        lines.append(
            f"| {r['bundle']} | {_cell(r['params'], ',')} | {r['artefact_kib']:.1f} | {lat} | "
            f"{_cell(r['peak_rss_mib'], '.1f')} | {_cell(r['rss_delta_mib'], '.1f')} | {top1} | "
            f"{_cell(r['parity_max_rel'], '.2e')} |"
        )
    if ratio_rows:
        lines += [
            "",
            f"## Compressed vs `{summary['baseline']}` (same backend and precision)",
            "",
            "x = times faster / smaller / fewer; model memory = RSS over the bare runtime.",
            "",
            "| bundle | vs | "
            + " | ".join(f"faster b{b}" for b in batches)
            + " | smaller file | less model memory | fewer params | top-1 change |",
            "|---|---|" + "---|" * len(batches) + "---|---|---|---|",
        ]
        for r in ratio_rows:
            speed = " | ".join(_cell(r["speedup"].get(str(b)), ".2f", "x") for b in batches)
            lines.append(
                f"| {r['bundle']} | {r['vs']} | {speed} | {_cell(r['smaller_file'], '.1f', 'x')}"
                f" | {_cell(r['less_model_memory'], '.2f', 'x')} | "
                f"{_cell(r['fewer_params'], '.1f', 'x')} | "
                f"{_cell(r['top1_change_points'], '+.2f', ' points')} |"
            )
    if summary.get("training"):
        lines += [
            "",
            "## Training",
            "",
            "| model | epochs | train time s | best epoch | best validation |",
            "|---|---|---|---|---|",
        ]
        for t in summary["training"]:
            metric = "val_accuracy" if "val_accuracy" in t else "val_loss"
            lines.append(
                f"| {t['model']} | {t['epochs']} | {t['train_s']} | {t['best_epoch']} | "
                f"{metric} {_cell(t.get(metric), '.4f')} |"
            )
    lines += ["", "Bench details: report.md; plots: pareto.png, latency_vs_batch.png.", ""]
    return "\n".join(lines)
