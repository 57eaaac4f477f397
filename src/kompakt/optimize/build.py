"""Building a searched choice into a measured bundle: apply it with the `kompakt compress` recipe
(prune and compact, fit the compressed layers in order to the dense outputs, re-estimate
BatchNorm), fine-tune against the dense model, export with the timed forms, deploy."""

from __future__ import annotations

from pathlib import Path

import torch

from kompakt.deploy import DeployConfig, build_bundle
from kompakt.deploy.builders import BuildOptions
from kompakt.export.exporter import (
    ExportConfig,
    checkpoint_metadata,
    checkpoint_samples,
    export_checkpoint,
    export_onnx,
    fixed_form,
)
from kompakt.models import layer_specs, load_checkpoint, make_checkpoint, model_from_checkpoint
from kompakt.models.checkpoint import save_checkpoint
from kompakt.models.common import set_submodule
from kompakt.models.resize import resize_records
from kompakt.models.surgery import compress_
from kompakt.optimize.profile import CostTable, prepared
from kompakt.optimize.search import Selection
from kompakt.optimize.space import KEEP
from kompakt.train.trainer import TrainConfig, fit


def plan_of(table: CostTable, selection: Selection) -> tuple[dict, dict]:
    """({layer: config} to compress, {layer: export form}) of a selection."""
    layers = table.models[selection.model].layers
    plan, forms = {}, {}
    for name, label in selection.layers:
        if label == KEEP:
            continue
        cost = layers[name][label]
        plan[name] = cost.config
        if cost.form:
            forms[name] = cost.form
    return plan, forms


def build_checkpoint(
    saved: dict, table: CostTable, selection: Selection, calib: torch.Tensor, path: Path
) -> dict:
    """Apply `selection` to the dense checkpoint's model and save it as a normal checkpoint
    (architecture rebuilt from layer specs and resize records); returns the compression report
    as rows."""
    model = prepared(model_from_checkpoint(saved), table.models[selection.model].choice, calib)
    plan, forms = plan_of(table, selection)
    report = compress_(model, plan, calib=calib) if plan else None
    spec = {**saved["model"], "layers": layer_specs(model), "resized": resize_records(model)}
    train = {"optimize": {"selection": selection.choices, "model": selection.model, "forms": forms}}
    save_checkpoint(make_checkpoint(model, spec, saved["data"], {}, train), path)
    return {"layers": report.layers if report else [], "forms": forms}


def finetune(built: Path, teacher: str, data: str, data_root, epochs: int, out: Path, seed, quiet):
    """Distilled fine-tune of the built model against the dense checkpoint; returns best.pt."""
    if epochs < 1:
        return built
    result = fit(
        TrainConfig(
            model=load_checkpoint(built)["model"]["name"],
            data=data,
            data_root=data_root,
            init_from=str(built),
            teacher=teacher,
            distill=True,
            epochs=epochs,
            out=str(out),
            seed=seed,
            quiet=quiet,
        )
    )
    return Path(result["best"])


def export_with_forms(ckpt_path: Path, forms: dict[str, str], path: Path) -> dict:
    """Export the checkpoint with every compressed layer in the form that was timed."""
    saved = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(saved).eval()
    for name, form in forms.items():
        set_submodule(model, name, fixed_form(model.get_submodule(name), form))
    samples = checkpoint_samples(saved, 64)
    if samples is None:
        shape = tuple(saved["data"]["input_shape"])
        samples = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    report = export_onnx(
        model, path, ExportConfig(), samples, metadata=checkpoint_metadata(saved, ckpt_path)
    )
    return report.to_dict() if hasattr(report, "to_dict") else {"ok": report.ok}


def deploy(onnx_path: Path, out: Path, backend: str, precision: str, ckpt: Path, threads) -> Path:
    config = DeployConfig(backend=backend, precision=precision, ckpt=str(ckpt), force=True)
    build_bundle(onnx_path, out, config, BuildOptions(threads=threads))
    return out


def dense_bundles(
    ckpt: str, folder: Path, backend: str, precisions: tuple[str, ...], threads
) -> dict[str, Path]:
    """The dense model's bundles at each precision: the baselines on the Pareto front."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "dense.onnx"
    export_checkpoint(ckpt, onnx_path, ExportConfig())
    return {
        p: deploy(onnx_path, folder / f"dense-{p}", backend, p, Path(ckpt), threads)
        for p in precisions
    }
