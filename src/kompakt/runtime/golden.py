"""Golden samples: inputs and the source graph's FP32 outputs stored in the bundle at build time,
re-run wherever the bundle is now. The check that catches "built on one machine, wrong on
another": a CPU without the INT8 instructions the build had, another ONNX Runtime or OpenVINO
version, a GPU computing in TF32.

numpy only, like the rest of kompakt.runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kompakt.errors import KompaktError
from kompakt.measure import parity
from kompakt.runtime.files import limits, read_checked

GOLDEN_FILE = "golden.npz"
DEFAULT_SAMPLES = 32
# the least drift allowed per precision, however exact the build machine was: rounding order
# differs between kernels and machines even when nothing is wrong
FLOOR = {"fp32": 1e-4, "fp16": 2e-2, "int8": 2e-2}


def read_golden(root: Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, reference) from the golden file the manifest hashes: opened once by that entry's
    path (a regular file, never a FIFO or device), checked against its size and sha256 from the
    bytes read, and inflated only after every member's declared size is within the
    `golden_bytes` limit."""
    import io
    import zipfile

    data = read_checked(root, entry)
    cap = limits().golden_bytes
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
        if declared > cap:
            raise KompaktError(
                f"golden samples {entry['path']} would inflate to {declared:,} bytes (limit "
                f"{cap:,}, raise it with KOMPAKT_LIMITS=golden_bytes=...); refused"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return np.asarray(arrays["inputs"]), np.asarray(arrays["reference"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise KompaktError(f"cannot read the golden samples {entry['path']}: {first}") from None


def _consistent(inputs: np.ndarray, reference: np.ndarray, output_shape: tuple) -> bool:
    """At least one sample, one reference per input, each shaped like the model's output (a
    dynamic axis, a string in the manifest, matches any size)."""
    if len(inputs) == 0 or reference.ndim != len(output_shape) or len(reference) != len(inputs):
        return False
    return all(
        not isinstance(d, int) or d == r
        for d, r in zip(output_shape[1:], reference.shape[1:], strict=True)
    )


class GoldenDriftError(KompaktError):
    """The bundle's outputs here differ from the build's by more than the recorded tolerance."""


def tolerance(precision: str, measured: dict, samples: int) -> dict:
    """What a later run may differ by: 3x the build's own error (never under the precision's
    floor), and top-1 agreement down by at most two samples' worth."""
    return {
        "max_rel": max(3 * measured["max_rel"], FLOOR.get(precision, 1e-4)),
        "min_top1_agreement": max(0.0, measured["top1_agreement"] - 2.0 / max(samples, 1)),
    }


def save_golden(folder: Path, inputs: np.ndarray, reference: np.ndarray) -> str:
    """Write golden.npz (inputs + reference outputs) into a bundle being built."""
    with open(folder / GOLDEN_FILE, "wb") as handle:
        np.savez_compressed(handle, inputs=inputs, reference=reference)
    return GOLDEN_FILE


def check(engine, record: dict, run_batch: int | None = None) -> dict:
    """Re-run the golden inputs through `engine` and compare with the stored reference.

    Returns:
        {"ok", "max_abs", "max_rel", "top1_agreement", "samples", "built", "tolerance"}.
    """
    entry = engine.manifest["files"].get(record["file"])
    if not isinstance(entry, dict):
        raise KompaktError(f"golden samples {record['file']!r} are not among the hashed files")
    inputs, reference = read_golden(engine.root, entry)
    if not _consistent(inputs, reference, engine.outputs[0].shape):
        raise KompaktError(
            f"golden samples hold {len(inputs)} inputs and references shaped "
            f"{tuple(reference.shape)}; expected at least one of each, as many references as "
            "inputs, shaped like the model's output: rebuild the bundle"
        )
    step = max(1, min(run_batch or len(inputs), engine.max_batch or len(inputs)))
    try:
        got = np.concatenate(
            [engine.run(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        )
    except KompaktError:
        raise
    except Exception as error:  # the backend's own failure (another runtime version, memory)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise KompaktError(
            f"the {engine.backend} backend failed on the golden samples: {first}; rebuild the "
            "bundle on this machine's runtime (kompakt deploy)"
        ) from None
    result = parity(reference, got)
    limits = record["tolerance"]
    result["ok"] = bool(
        result["max_rel"] <= limits["max_rel"]
        and result["top1_agreement"] >= limits["min_top1_agreement"]
    )
    result["built"] = record.get("built")
    result["tolerance"] = limits
    return result


def describe(result: dict) -> str:
    """One line for a person: what was measured against what the build allowed."""
    limits = result["tolerance"]
    verdict = "ok" if result["ok"] else "DRIFT"
    return (
        f"golden samples: {verdict}: max rel {result['max_rel']:.3g} (allowed "
        f"{limits['max_rel']:.3g}), top-1 agreement {result['top1_agreement']:.4f} (allowed "
        f">= {limits['min_top1_agreement']:.4f}) over {result['samples']} samples"
    )
