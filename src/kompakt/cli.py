"""The `kompakt` command: a thin click layer over the library.

Each command calls one public function. A `KompaktError` becomes one line on stderr and exit
code 1; `kompakt --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import click

from kompakt import __version__
from kompakt.catalogue import list_command, print_listing
from kompakt.deploy.builders.base import BuildOptions
from kompakt.deploy.bundle import DeployConfig
from kompakt.errors import ConfigError, KompaktError
from kompakt.export.exporter import ExportConfig
from kompakt.optimize.config import OptimizeConfig
from kompakt.options import click_options, config_from
from kompakt.quiet import quiet_libraries
from kompakt.runtime_bench.bench import BenchConfig
from kompakt.search.darts import SearchConfig
from kompakt.train.compress import CompressConfig
from kompakt.train.trainer import TrainConfig


class KompaktGroup(click.Group):
    """A click group that turns library errors into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        debug = bool(ctx.params.get("debug"))  # parsed before invoke
        try:
            with quiet_libraries(debug, echo=lambda line: click.echo(line, err=True)):
                return super().invoke(ctx)
        except KompaktError as error:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"kompakt: error: {error}", err=True)
            ctx.exit(1)


@click.group(cls=KompaktGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kompakt")
@click.option("--debug", is_flag=True, help="Show full tracebacks, and other libraries' log lines.")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    envvar="KOMPAKT_PLUGINS",
    help="Import this module first (it registers layers, compressions, backends...); "
    "repeatable, or KOMPAKT_PLUGINS=mod1,mod2.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, plugins: tuple[str, ...]) -> None:
    """kompakt: train compressed image models, export them to ONNX, deploy and measure them."""
    ctx.ensure_object(dict)["debug"] = debug
    for name in (n.strip() for item in plugins for n in item.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(
                f"--plugin {name}: cannot import it ({error}); put its folder on PYTHONPATH"
            ) from None


def _int_list(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").replace("*", ",").split(",") if v)
    except ValueError:
        raise ConfigError(f"--{name} expects integers separated by commas, got {text!r}") from None


cli.add_command(list_command)


@cli.command("layers", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def layers_command(as_json: bool) -> None:
    """Old spelling of `kompakt list layers`."""
    print_listing("layers", as_json, live=True)


@cli.command("tt-plan")
@click.argument("in_features", type=int)
@click.argument("out_features", type=int)
@click.option("--in-modes", help="Factorisation of IN_FEATURES, e.g. 2,7,8,8,7,4.")
@click.option("--out-modes", help="Factorisation of OUT_FEATURES, e.g. 4,4,4,4,4,4.")
@click.option("--ranks", default="8", show_default=True, help="Rank cap, or one rank per bond.")
@click.option("--batch", default=1, show_default=True, help="Batch size for the cost model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tt_plan_command(
    in_features: int,
    out_features: int,
    in_modes: str | None,
    out_modes: str | None,
    ranks: str,
    batch: int,
    as_json: bool,
) -> None:
    """Plan a TT-linear layer: modes, ranks, parameters, multiply-adds, compression."""
    from kompakt.layers.tt import plan_tt_linear

    rank_list = _int_list(ranks, "ranks")
    plan = plan_tt_linear(
        in_features,
        out_features,
        _int_list(in_modes, "in-modes"),
        _int_list(out_modes, "out-modes"),
        rank_list[0] if rank_list and len(rank_list) == 1 else rank_list,
        batch,
    )
    if as_json:
        click.echo(json.dumps(plan, indent=2))
        return
    for key, value in plan.items():
        click.echo(f"{key:<22} {value}")


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} expects numbers separated by commas, got {text!r}") from None


def _read_toml(path: str | None) -> dict:
    from kompakt._io import load_toml

    return {} if path is None else load_toml(path)


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@cli.group("data")
def data_group() -> None:
    """Datasets: embedded real data, file formats, synthetic."""


@data_group.command("samples")
@click.argument("dataset")
@click.option("-n", "--n", "count", default=8, show_default=True, help="How many images.")
@click.option("-o", "--out", "out", required=True, help="Directory for the PNG files.")
@click.option("--split", default="test", show_default=True, help="train, val or test.")
@click.option("--data-root", default=None, help="Directory for file-based datasets.")
def data_samples_command(
    dataset: str, count: int, out: str, split: str, data_root: str | None
) -> None:
    """Write N images of a dataset as PNG files (named INDEX_LABEL.png), e.g. for predict."""
    import numpy as np

    from kompakt.data import load_dataset
    from kompakt.runtime import require

    image_module = require("PIL.Image", "data", "kompakt data samples (it writes PNG files)")
    data = load_dataset(dataset, root=data_root)
    if split not in data.raw:
        raise ConfigError(f"split must be one of {sorted(data.raw)}, got {split!r}")
    raw, labels = data.raw[split][:count], data.y[split][:count]
    if raw.ndim != 4 or raw.shape[1] not in (1, 3) or raw.min() < 0 or raw.max() > 255:
        raise ConfigError(
            f"{dataset} is not 8-bit images (shape {raw.shape[1:]}, values {raw.min():.3g}.."
            f"{raw.max():.3g}); samples can only be written for image datasets"
        )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    names = data.info.class_names
    for i, (image, label) in enumerate(zip(raw, labels.tolist(), strict=True)):
        pixels = np.round(image).astype(np.uint8).transpose(1, 2, 0)
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        name = names[label] if names else str(label)
        image_module.fromarray(pixels).save(folder / f"{i:04d}_{name}.png")
    click.echo(f"wrote {len(raw)} {dataset} {split} images to {folder}")


def _add_list_command(group: click.Group, kind: str) -> None:
    @group.command("list", help=f"Old spelling of `kompakt list {kind}`.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_command(as_json: bool) -> None:
        print_listing(kind, as_json, live=True)


@cli.group("models")
def models_group() -> None:
    """The model zoo."""


_add_list_command(data_group, "data")
_add_list_command(models_group, "models")


def _key_values(ctx: click.Context, param: str, flag: str) -> dict:
    """Repeated KEY=VALUE options as a dict (values parsed as numbers/booleans when they are)."""
    values = {}
    for item in ctx.params.get(param) or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        values[key] = _parse_value(value)
    return values


@cli.command("train")
@click_options(TrainConfig)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra model builder argument (repeatable), e.g. width=0.25.",
)
@click.option(
    "--prune-arg",
    "prune_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Relevance pruning setting (repeatable), e.g. allocation=per-group, dummies=16.",
)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def train_command(ctx: click.Context, **_: object) -> None:
    """Train a zoo model (optionally compressed) and write checkpoints and metrics."""
    from kompakt.train import fit
    from kompakt.train.trainer import initialise

    config = config_from(ctx, TrainConfig, "train")
    model_kwargs = {**config.model_kwargs, **_key_values(ctx, "model_args", "--model-arg")}
    prune_options = {**config.prune_options, **_key_values(ctx, "prune_args", "--prune-arg")}
    config = dataclasses.replace(config, model_kwargs=model_kwargs, prune_options=prune_options)
    result = initialise(config) if config.epochs == 0 else fit(config)  # 0: adopt --weights
    if ctx.params.get("as_json"):
        click.echo(json.dumps(result, indent=2))
    else:
        test = ", ".join(f"{k}={v:.4f}" for k, v in result.get("test", {}).items())
        click.echo(
            f"done: {result.get('params')} parameters; test {test}; checkpoints in "
            f"{result.get('out')}"
        )


@cli.command("prune")
@click.argument("ckpt", type=click.Path())
@click.option("--method", type=click.Choice(["l1", "euclidean", "relevance"]), required=True)
@click.option("--ratio", default=0.6, show_default=True, type=float, help="Filter sparsity.")
@click.option("--finetune-epochs", default=3, show_default=True, type=int)
@click.option("--lr", default=0.01, show_default=True, type=float)
@click.option("--data-root", default=None)
@click.option("-o", "--out", required=True, help="Output directory.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def prune_command(
    ckpt: str,
    method: str,
    ratio: float,
    finetune_epochs: int,
    lr: float,
    data_root: str | None,
    out: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Prune conv filters of a trained checkpoint (physically removed), then fine-tune."""
    from kompakt.train.prune import prune_checkpoint

    result = prune_checkpoint(ckpt, method, ratio, finetune_epochs, out, lr, data_root, quiet)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"pruned ({method}, {ratio:.0%} of filters): {result.get('params')} "
            f"parameters; checkpoint {result.get('best')}"
        )


@cli.command("optimize")
@click.argument("ckpt", type=click.Path())
@click_options(OptimizeConfig)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def optimize_command(ctx: click.Context, ckpt: str, **_: object) -> None:
    """Choose per layer how to prune, factorise and quantise CKPT for latency (or size) measured
    on this machine, build and fine-tune it, and bench it against the dense FP32 / INT8 bundles;
    writes OUT/optimize.md, optimize.json, pareto.png and the bundle."""
    from kompakt.optimize import optimize

    summary = optimize(ckpt, config_from(ctx, OptimizeConfig, "optimize"))
    if ctx.params["as_json"]:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(f"bundle: {summary['bundle']}")
    for name, row in summary["versus"].items():
        speed = ", ".join(f"b{b} {v:.2f}x" for b, v in row["speedup"].items())
        click.echo(
            f"vs {name}: {speed} faster, {row['smaller_file']:.1f}x smaller file, top-1 "
            f"{row['top1_change_points']:+.2f} points"
        )
    if not summary["within_accuracy_limit"]:
        click.echo(
            "warning: no round met --max-accuracy-drop; the last round is reported", err=True
        )
    click.echo(f"report: {Path(summary['config']['out']) / 'optimize.md'}")


@cli.command("compress")
@click.argument("ckpt", type=click.Path())
@click_options(CompressConfig)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def compress_command(ctx: click.Context, ckpt: str, **_: object) -> None:
    """Compress a trained checkpoint and keep its accuracy: output-aware init, distilled
    fine-tune; writes OUT/best.pt and OUT/last.pt like kompakt train."""
    from kompakt.train.compress import compress_checkpoint

    result = compress_checkpoint(ckpt, config_from(ctx, CompressConfig, "compress"))
    if ctx.params["as_json"]:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    test = ", ".join(f"{k}={v:.4g}" for k, v in result["test"].items())
    click.echo(
        f"done: {result['params']} parameters; test ({result['test_from']}) {test}; "
        f"checkpoints in {result['out']}"
    )


@cli.command("search")
@click_options(SearchConfig)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search_command(ctx: click.Context, **_: object) -> None:
    """Search a cell architecture (first-order DARTS); writes OUT/searched.pt to retrain."""
    from kompakt.search import search

    result = search(config_from(ctx, SearchConfig, "search"))
    if ctx.params["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    edges = ", ".join(f"{e['from']}->{e['to']}: {e['op']}" for e in result["genotype"]["edges"])
    click.echo(f"searched cell: {edges}; {result['params']} parameters; val {result['val']}")
    click.echo(f"retrain: kompakt train --init-from {result['searched']} --data ... --out ...")


@cli.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def inspect_command(path: str, as_json: bool) -> None:
    """Per-layer table: output shape, parameters, multiply-adds, activation memory."""
    from kompakt.inspect import format_inspection, inspect_model
    from kompakt.models.checkpoint import load_checkpoint, model_from_checkpoint

    if path.endswith(".onnx") or Path(path).is_dir():  # an ONNX file or a bundle
        from kompakt.inspect import inspect_onnx

        report = inspect_onnx(path)
    else:
        ckpt = load_checkpoint(path)
        report = inspect_model(model_from_checkpoint(ckpt), tuple(ckpt["data"]["input_shape"]))
    click.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


@cli.command("export")
@click.argument("ckpt", type=click.Path())
@click.option("-o", "--out", "--output", "output", required=True, help="The .onnx file to write.")
@click_options(ExportConfig)
@click.option("--mean", default=None, help="Override the preprocessing mean, e.g. 0.49,0.48,0.45.")
@click.option("--std", default=None, help="Override the preprocessing std, e.g. 0.25,0.24,0.26.")
@click.option("--pixel-scale", type=float, default=None, help="Override the raw-value scale.")
@click.option("--class-names", default=None, help="Override the labels: cat,dog,... in order.")
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def export_command(ctx: click.Context, ckpt: str, output: str, **_: object) -> None:
    """Export a checkpoint to ONNX (standard ops only), verified against PyTorch; its dataset's
    preprocessing and class names travel in the metadata unless overridden here."""
    from kompakt.export import export_checkpoint
    from kompakt.models.checkpoint import load_checkpoint
    from kompakt.runtime.preprocessing import Preprocessing

    params = ctx.params
    preprocessing = None
    if any(params[k] is not None for k in ("mean", "std", "pixel_scale")):
        data = load_checkpoint(ckpt)["data"]
        preprocessing = Preprocessing(
            mean=_floats(params["mean"], "mean") or tuple(data.get("mean") or (0.0,)),
            std=_floats(params["std"], "std") or tuple(data.get("std") or (1.0,)),
            scale=params["pixel_scale"] or float(data.get("scale", 1 / 255)),
        )
    names = None
    if params["class_names"] is not None:
        names = [n.strip() for n in params["class_names"].split(",")]
    report = export_checkpoint(
        ckpt, output, config_from(ctx, ExportConfig, "export"), preprocessing, names
    )
    click.echo(
        json.dumps(report.to_dict(), indent=2) if ctx.params["as_json"] else report.summary()
    )


@cli.command("lint-trt")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def lint_trt_command(model: str, as_json: bool) -> None:
    """Check an ONNX graph against TensorRT's ONNX parser (no GPU needed); exit 1 on errors."""
    from kompakt.export import lint_trt

    report = lint_trt(model)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else str(report))
    if not report.ok:
        sys.exit(1)


@cli.command("deploy")
@click.argument("model", type=click.Path(), required=False)
@click.option("-o", "--out", "--output", "output", help="The bundle directory to write.")
@click_options(DeployConfig)
@click_options(BuildOptions)
@click.option(
    "--list-backends", is_flag=True, hidden=True, help="Old spelling of `kompakt list backends`."
)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def deploy_command(ctx: click.Context, model: str | None, output: str | None, **_: object) -> None:
    """Build a bundle (engine + manifest) from an ONNX model for one backend and precision."""
    from kompakt.deploy import build_bundle

    as_json = ctx.params["as_json"]
    if ctx.params["list_backends"]:  # old spelling of `kompakt list backends`
        print_listing("backends", as_json)
        return
    if model is None or output is None:
        raise ConfigError("kompakt deploy needs MODEL.onnx and -o BUNDLE_DIR")
    config, options = config_from(ctx, (DeployConfig, BuildOptions), "deploy")
    manifest = build_bundle(model, output, config, options)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    parity = manifest["parity"].get("vs_source_onnx", {})
    click.echo(
        f"{output}: {manifest['backend']} {manifest['precision']}, artefact "
        f"{manifest['artifact']}, built in {manifest['build_seconds']} s"
    )
    if parity:
        click.echo(
            f"parity vs source ONNX: max abs {parity['max_abs']:.3g}, top-1 agreement "
            f"{parity['top1_agreement']:.4f}"
        )
    if manifest.get("accuracy"):
        click.echo(_accuracy_line(manifest["accuracy"]))


def _accuracy_line(acc: dict) -> str:
    """'val top-1 (270 samples): source 96.30 %, bundle 95.93 % (-0.37 points)', or the
    regression metrics as name=value."""
    source, bundle = acc["fp32_source"], acc["bundle"]
    where = f"{acc.get('split', 'val')} ({acc.get('samples', '?')} samples)"
    if "top1" in source and "top1" in bundle:
        drop = acc.get("drop_points", 100 * (source["top1"] - bundle["top1"]))
        return (
            f"{where} top-1: source {100 * source['top1']:.2f} %, bundle "
            f"{100 * bundle['top1']:.2f} % ({-drop:+.2f} points)"
        )
    shown = ", ".join(f"{k} {source[k]:.4g} -> {bundle.get(k, float('nan')):.4g}" for k in source)
    return f"{where}: {shown}"


@cli.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("--backend", default=None, help="Override the bundle's backend.")
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    help="Ed25519 public key (base64 or a file); the bundle must be signed by one of them.",
)
@click.option(
    "--expect",
    default=None,
    help="The bundle you expect: NAME, NAME@VERSION, NAME@>=VERSION (no rollback) or "
    "sha256:DIGEST; binding with --trusted-key.",
)
@click.option("--json", "as_json", is_flag=True)
def verify_command(
    bundle: str,
    backend: str | None,
    trusted_keys: tuple[str, ...],
    expect: str | None,
    as_json: bool,
) -> None:
    """Check a bundle on this machine: every file's hash, the signature (with --trusted-key or
    $KOMPAKT_TRUSTED_KEYS), its identity (--expect), then its golden samples; exit 1 on drift."""
    from kompakt.runtime import commands

    result, line = commands.verify(bundle, backend, trusted_keys, expect)
    click.echo(json.dumps(result, indent=2) if as_json else line)
    if not result["ok"]:
        sys.exit(1)


@cli.command("keygen")
@click.option("-o", "--output", "output", required=True, help="Private key file to write.")
def keygen_command(output: str) -> None:
    """Make an Ed25519 key pair for signing bundles: OUTPUT (private, keep it secret) and
    OUTPUT.pub (public, give it to whoever loads your bundles)."""
    from kompakt._io import atomic_write_text
    from kompakt.runtime.signing import generate_key

    if Path(output).exists():
        raise ConfigError(f"{output} exists; refusing to overwrite a key")
    private, public = generate_key()
    atomic_write_text(output, private + "\n")
    Path(output).chmod(0o600)
    atomic_write_text(f"{output}.pub", public + "\n")
    click.echo(f"private key {output} (keep it secret), public key {output}.pub: {public}")


@cli.command("predict")
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=3, show_default=True, type=int)
@click.option("--backend", default=None, help="Override the bundle's backend.")
@click.option("--json", "as_json", is_flag=True)
def predict_command(
    bundle: str, images: tuple[str, ...], top_k: int, backend: str | None, as_json: bool
) -> None:
    """Classify image files with a bundle (its preprocessing; no resizing)."""
    from kompakt.runtime import commands

    rows = commands.predict(bundle, images, top_k, backend)
    click.echo(
        json.dumps(rows, indent=2) if as_json else "\n".join(commands.prediction_lines(rows))
    )


@cli.command("bench")
@click.argument("bundles", nargs=-1, type=click.Path())
@click_options(BenchConfig)
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(),
    default=None,
    help="OLD.json NEW.json: print regressions, exit 1 if any.",
)
@click.option(
    "--threshold",
    default=0.10,
    show_default=True,
    type=float,
    help="With --compare: the slowdown (a fraction) that counts as a regression, raised to "
    "twice the runs' coefficient of variation when they were noisier.",
)
@click.option("--config", type=click.Path(), default=None, help="TOML file with these options.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench_command(ctx: click.Context, bundles: tuple[str, ...], **_: object) -> None:
    """Measure bundles side by side: latency, memory, size, accuracy, parity."""
    from kompakt.runtime_bench.bench import compare as compare_results
    from kompakt.runtime_bench.bench import compare_table, run_config

    compare, threshold = ctx.params["compare"], ctx.params["threshold"]
    if compare:
        old, new = (_read_results(p) for p in compare)
        regressions = compare_results(old, new, threshold)
        for row in compare_table(old, new):
            change = "" if row["change"] is None else f"{row['change']:+.1%}"
            noise = "" if row["noise_cv"] is None else f"  (noise cv {row['noise_cv']:.0%})"
            click.echo(
                f"{row['bundle']:<28} {row['what']:<30} {row['old']:>10.4g} -> "
                f"{row['new']:>10.4g} {change:>8}{noise}"
            )
        for line in regressions:
            click.echo(f"REGRESSION {line}")
        if regressions:
            sys.exit(1)
        click.echo(f"no regressions beyond {threshold:.0%}")
        return
    results = run_config(list(bundles), config_from(ctx, BenchConfig, "bench"))
    if ctx.params["as_json"]:
        click.echo(json.dumps(results, indent=2))
        return
    from kompakt.runtime_bench.report import render_markdown

    click.echo(render_markdown(results))


def _read_results(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"results file {path} does not exist (kompakt bench --report DIR "
            "writes DIR/results.json)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read results file {path}: {error}") from None


@cli.command("pipeline")
@click.option(
    "--config",
    type=click.Path(),
    default=None,
    help="Pipeline TOML (default: the packaged mnist5k run).",
)
@click.option("-o", "--out", default=None, help="Output directory (overrides [pipeline] out).")
@click.option("--force", is_flag=True, help="Re-run every stage, ignoring the cache.")
@click.option("--show-config", is_flag=True, help="Print the default config and exit.")
@click.option("--json", "as_json", is_flag=True)
def pipeline_command(
    config: str | None, out: str | None, force: bool, show_config: bool, as_json: bool
) -> None:
    """Train, compress, export, deploy and benchmark from one TOML file."""
    from importlib import resources

    from kompakt.pipeline import format_summary, run_pipeline

    if show_config:
        click.echo(resources.files("kompakt.pipeline").joinpath("default.toml").read_text())
        return
    result = run_pipeline(config, out, force)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(format_summary(result["summary"], result["ratios"]))
    click.echo(
        f"\n{result['out']}: report/pipeline.md, report/report.md, report/*.png, summary.json; "
        f"this run is kept under history/ ({result['wall_s']} s)"
    )


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"kompakt: warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    import warnings

    warnings.formatwarning = _one_line_warning  # no source lines of ours on a user's terminal
    cli.main(args=argv, prog_name="kompakt")


if __name__ == "__main__":
    sys.exit(main())
