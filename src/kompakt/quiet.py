"""Other libraries' chatter kept off the terminal: ONNX Runtime's quantizer logs through the root
logger ("Axis 1 is out-of-range for weight ..."), torch.onnx and OpenVINO raise warnings about
their own internals. A user running kompakt should see kompakt's lines; `--debug` shows the rest.
Errors they log are not lost: they are counted and named in one kompakt line at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

_KOMPAKT = str(Path(__file__).resolve().parent)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _issued_by_kompakt(filename: str) -> bool:
    """The code that called warnings.warn is kompakt's: the first frame above the warnings
    machinery (a `stacklevel` may point `filename` at the caller, e.g. a user's script)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.endswith("warnings.py"):
        frame = frame.f_back
    issuer = frame.f_code.co_filename if frame is not None else filename
    return any(str(Path(f).resolve()).startswith(_KOMPAKT) for f in (issuer, filename))


@contextlib.contextmanager
def quiet_libraries(debug: bool = False, echo=print) -> Iterator[list]:
    """While this runs, log records of other libraries are collected instead of printed (the
    root logger gets a handler, so Python's last-resort printer stays silent), and warnings
    raised outside kompakt's own files are collected too; kompakt's warnings are shown as one
    line each. On exit, hidden ERROR records are summarised in one line through `echo`.

    Yields the list of hidden messages (for tests)."""
    if debug:
        yield []
        return
    hidden: list[str] = []
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if _issued_by_kompakt(filename):
            echo(f"kompakt: warning: {message}")
        else:
            hidden.append(f"{category.__name__}: {message}")

    warnings.showwarning = show
    try:
        yield hidden
    finally:
        warnings.showwarning = previous
        root.removeHandler(handler)
        hidden.extend(f"{r.name}: {r.getMessage()}" for r in handler.records)
        errors = [r for r in handler.records if r.levelno >= logging.ERROR]
        if errors:
            sources = sorted({r.name for r in errors})
            echo(
                f"kompakt: {len(errors)} error message(s) from {', '.join(sources)} were hidden "
                f"(first: {errors[0].getMessage()[:200]}); rerun with --debug to see them"
            )
