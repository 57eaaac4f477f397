"""One progress helper for long loops: a tqdm bar on a terminal, and off a terminal (CI logs,
`nohup`, a pipe) a plain heartbeat line every ~10 s, so a log shows the run is alive and how
far it is. `KOMPAKT_HEARTBEAT_S` sets the interval (0: every step)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

HEARTBEAT_S = 10.0


class Heartbeat:
    """The subset of tqdm's interface kompakt uses, printing `desc: n/total ..., ETA` lines."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, every_s: float):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc, self.every_s = desc, every_s
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        elapsed = now - self.start
        done = f"{self.n}"
        eta = ""
        if self.total:
            done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f} %)"
            if self.n:
                eta = f", ETA {elapsed / self.n * (self.total - self.n):.0f} s"
        return f"{self.desc}: {done}, {elapsed:.0f} s{eta}{self.postfix}"

    def set_postfix(self, **values: object) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to clear: heartbeat lines are a log, not a bar."""


def _length(iterable: Iterable | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    quiet: bool = False,
    leave: bool = False,
):
    """A tqdm bar on a terminal, a Heartbeat elsewhere, nothing when `quiet`."""
    from tqdm import tqdm

    if quiet:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr)
    every = float(os.environ.get("KOMPAKT_HEARTBEAT_S", HEARTBEAT_S))
    return Heartbeat(iterable, total, desc, every)
