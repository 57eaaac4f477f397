"""`kompakt verify` and `kompakt predict`: the two commands an app's machine needs, written once
and used by the full CLI (click) and by the runtime-only install (argparse, no click or torch:
`pip install kompakt[cpu]`). numpy, the backend and (for predict) Pillow only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kompakt.errors import ConfigError, KompaktError


def verify(
    bundle: str,
    backend: str | None = None,
    trusted_keys: Sequence[str] = (),
    expect: str | None = None,
) -> tuple[dict, str]:
    """Hashes, signature (with keys), identity (with expect), then the golden samples here.
    Returns (the result record, one line for a person)."""
    from kompakt.runtime import golden, load

    keys = list(trusted_keys) or None
    with load(bundle, backend=backend, trusted_keys=keys, expect=expect) as engine:
        result = engine.verify()
        result["signed_by"] = (engine.manifest.get("signature") or {}).get("public_key")
        result["identity"] = engine.identity
    who = result["identity"]
    line = (
        f"{bundle}: {who['name']}@{who['version']} (manifest sha256:{who['digest'][:16]}..., "
        f"{'signed' if who['signed'] else 'unsigned'}): {golden.describe(result)}"
    )
    return result, line


def predict(
    bundle: str, images: Sequence[str], top_k: int = 3, backend: str | None = None
) -> list[dict]:
    """Classify image files with the bundle's preprocessing (no resizing): one row per image."""
    import numpy as np

    from kompakt.runtime import load, require

    image_module = require("PIL.Image", "data", "kompakt predict (it reads images with Pillow)")
    with load(bundle, backend=backend) as engine:
        channels = engine.inputs[0].shape[1]
        arrays = []
        for path in images:
            try:
                with image_module.open(path) as img:
                    arrays.append(np.asarray(img.convert("L" if channels == 1 else "RGB")))
            except OSError as error:
                raise ConfigError(f"cannot read image {path}: {error}") from None
        predictions = engine.predict(arrays, top_k=top_k)
    return [
        {
            "image": path,
            "label": p.label,
            "index": p.index,
            "score": p.score,
            "top_k": [{"label": n, "score": s} for n, s in p.top_k],
        }
        for path, p in zip(images, predictions, strict=True)
    ]


def prediction_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        alternatives = ", ".join(f"{t['label']} {t['score']:.3f}" for t in row["top_k"])
        lines.append(f"{row['image']}: {row['label']} ({row['score']:.3f})  [{alternatives}]")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The runtime-only `kompakt`: verify and predict, same options as the full CLI."""
    parser = argparse.ArgumentParser(
        prog="kompakt",
        description="kompakt runtime: verify and run bundles (the full tool: "
        "pip install 'kompakt[train,cpu]').",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="hashes, signature, identity, golden samples")
    check.add_argument("bundle")
    check.add_argument("--backend")
    check.add_argument("--trusted-key", dest="trusted_keys", action="append", default=[])
    check.add_argument("--expect")
    check.add_argument("--json", dest="as_json", action="store_true")
    classify = commands.add_parser("predict", help="classify image files")
    classify.add_argument("bundle")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--top-k", type=int, default=3)
    classify.add_argument("--backend")
    classify.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            result, line = verify(args.bundle, args.backend, args.trusted_keys, args.expect)
            print(json.dumps(result, indent=2) if args.as_json else line)
            return 0 if result["ok"] else 1
        rows = predict(args.bundle, args.images, args.top_k, args.backend)
        print(json.dumps(rows, indent=2) if args.as_json else "\n".join(prediction_lines(rows)))
        return 0
    except KompaktError as error:
        print(f"kompakt: error: {error}", file=sys.stderr)
        return 1
