"""Run kompakt as a user does: the real console entry point in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys


def kompakt(*args: str, env: dict | None = None, cwd: str | None = None):
    """`kompakt ARGS...` in a subprocess; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "kompakt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def python(code: str, env: dict | None = None):
    """`python -c CODE` in a subprocess (a fresh interpreter)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def killed_at_step(call: str, step: int):
    """A fresh interpreter that runs `call` (Python that passes `hooks=[Kill()]` to fit or
    compress_checkpoint) and dies by SIGKILL after global step `step`: a run killed mid-epoch."""
    return python(
        "import os, signal\n"
        "from kompakt.train import TrainHook\n"
        "class Kill(TrainHook):\n"
        "    def after_step(self, step, loss):\n"
        f"        if step + 1 >= {step}: os.kill(os.getpid(), signal.SIGKILL)\n" + call
    )
