"""`kompakt inspect`: the CS231n per-layer table (output shape, parameters, multiply-adds,
activation memory) for a checkpoint's model, with each factored layer's compression."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from kompakt.layers import CompressedLayer


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, CompressedLayer):
        return module.macs(tuple(inp.shape))
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return out.numel() * per_output
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def inspect_model(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Per-layer rows for one sample of `input_shape` (C, H, W), and totals.

    Leaf modules and the compressed layers (counted as one row each) are listed in call order.
    """
    rows: list[dict] = []
    hooks = []

    def hook(name: str):
        def record(module, args, output):
            inp = args[0]
            params = sum(p.numel() for p in module.parameters())
            row = {
                "name": name,
                "type": type(module).__name__,
                "output_shape": list(output.shape[1:]),
                "params": params,
                "macs": _macs(module, inp, output),
                "activation_bytes": output[0].numel() * 4,
            }
            if hasattr(module, "compression_ratio"):
                row["compression"] = round(module.compression_ratio(), 2)
            rows.append(row)

        return record

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, CompressedLayer) or not list(child.children()):
                hooks.append(child.register_forward_hook(hook(full)))
            else:
                visit(full, child)

    visit("", model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total_params = sum(p.numel() for p in model.parameters())
    return {
        "input_shape": list(input_shape),
        "layers": rows,
        "total_params": total_params,
        "total_macs": sum(r["macs"] for r in rows),
        "total_activation_bytes": sum(r["activation_bytes"] for r in rows),
        "param_bytes": total_params * 4,
    }


def format_inspection(report: dict) -> str:
    header = (
        f"{'layer':<26} {'type':<16} {'output':<16} {'params':>10} {'MACs':>12} "
        f"{'act KiB':>8} {'compr':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in report["layers"]:
        compression = f"{r['compression']:.1f}x" if "compression" in r else ""
        shape = "x".join(map(str, r["output_shape"]))
        lines.append(
            f"{r['name']:<26} {r['type']:<16} {shape:<16} {r['params']:>10,} {r['macs']:>12,} "
            f"{r['activation_bytes'] / 1024:>8.1f} {compression:>8}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"total: {report['total_params']:,} parameters ({report['param_bytes'] / 2**20:.2f} MiB "
        f"fp32), {report['total_macs']:,} multiply-adds, "
        f"{report['total_activation_bytes'] / 2**20:.2f} MiB activations per image"
    )
    return "\n".join(lines)


def inspect_onnx(path: str) -> dict:
    """The same table for an ONNX graph, one row per node (batch axis taken as 1). A bundle
    directory is inspected through its source graph."""
    import onnx
    from onnx import numpy_helper, shape_inference

    from kompakt.errors import KompaktError

    if Path(path).is_dir():
        source = Path(path) / "model.onnx"
        if not source.is_file():
            raise KompaktError(f"{path} is a directory without model.onnx (not a kompakt bundle)")
        path = str(source)

    try:
        model = shape_inference.infer_shapes(onnx.load(path))
    except Exception as error:
        raise KompaktError(f"cannot read ONNX file {path}: {error}") from None
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def dims(value_info) -> list[int]:
        return [
            d.dim_value if d.dim_value > 0 else 1 for d in value_info.type.tensor_type.shape.dim
        ]

    shapes = {vi.name: dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    for name, array in inits.items():
        shapes[name] = list(array.shape)
    rows = []
    counted: set[str] = set()  # an initializer shared by several nodes is counted once
    for node in graph.node:
        out = shapes.get(node.output[0], [])
        # parameters are float tensors; int64 shape constants (Reshape targets) are not
        own = [
            i for i in node.input if i in inits and i not in counted and inits[i].dtype.kind in "fc"
        ]
        counted.update(own)
        params = sum(inits[i].size for i in own)
        macs = 0
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            weight = shapes[node.input[1]]
            macs = math.prod(out) * math.prod(weight[1:])
        elif node.op_type in ("MatMul", "Gemm") and node.input[0] in shapes:
            k = shapes[node.input[0]][-1]
            macs = math.prod(out) * k
        rows.append(
            {
                "name": node.name or node.output[0],
                "type": node.op_type,
                "output_shape": out[1:],
                "params": int(params),
                "macs": int(macs),
                "activation_bytes": math.prod(out) * 4 if out else 0,
            }
        )
    total = int(sum(a.size for a in inits.values()))
    first = graph.input[0]
    return {
        "input_shape": dims(first)[1:],
        "layers": rows,
        "total_params": total,
        "total_macs": sum(r["macs"] for r in rows),
        "total_activation_bytes": sum(r["activation_bytes"] for r in rows),
        "param_bytes": total * 4,
    }
