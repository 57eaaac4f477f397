"""Timing several callables side by side, so machine drift hits all of them equally."""

from __future__ import annotations

from kompakt.timing import interleaved_medians, interleaved_times

__all__ = ["interleaved_medians", "interleaved_times", "save_results"]


def save_results(path: str, benchmark: str, settings: dict, **sections: object) -> dict:
    """Write a benchmark's results JSON (with the date and the machine) atomically."""
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    from kompakt.machine import describe_machine

    result = {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "machine": describe_machine(("torch", "onnx", "onnxruntime", "openvino")),
        **sections,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return result
