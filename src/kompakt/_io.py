"""File helpers every stage shares: sha256 and atomic writes. Standard library only, so
`kompakt.runtime` can use them without pulling anything in."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(handle)` on a temp file beside `path`, fsync, then rename it over `path`:
    readers see the old file or the new one, never half of one; a crash leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates it private; our outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write` for text (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def parse_toml(text: str, where: str) -> dict:
    """Parse TOML text (tomllib on 3.11+, tomli before); `where` names it in errors.

    Raises:
        ConfigError: not valid TOML (with the parser's message).
    """
    from kompakt.errors import ConfigError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where} is not valid TOML: {error}") from None


def load_toml(path: str | Path) -> dict:
    """Read and parse a TOML file.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
    """
    from kompakt.errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    return parse_toml(text, f"config file {path}")
