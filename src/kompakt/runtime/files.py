"""Reading a bundle's files as an attacker who can write into the bundle directory would have us
read them: each file opened once, without following links or blocking, through the directory
the engine holds open, size-capped, hashed from the bytes used; limits on what a manifest can
make us read; what is in the directory that the manifest does not list.

Standard library only, like the rest of `kompakt.runtime`'s loading path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import warnings
from pathlib import Path

from kompakt.errors import KompaktError

LIMITS_ENV = "KOMPAKT_LIMITS"  # e.g. "manifest_bytes=8M,total_bytes=16G"


class BundleError(KompaktError):
    """A bundle is missing, tampered with, truncated or malformed."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one manifest may make the runtime read. kompakt's own bundles use a small fraction
    of each (a manifest is ~10 KB with ~10 files); raise one with $KOMPAKT_LIMITS."""

    manifest_bytes: int = 4 << 20  # kompakt.json itself, read before it is parsed
    json_values: int = 100_000  # objects, arrays, strings and numbers in the manifest
    json_depth: int = 32
    string_chars: int = 65_536  # any one string in the manifest
    files: int = 256  # entries in `files` (and files found in the bundle directory)
    total_bytes: int = 16 << 30  # all listed files together (an ImageNet engine is < 1 GiB)
    golden_bytes: int = 64 << 20  # golden samples once inflated (kompakt stores 32 samples)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def limits() -> Limits:
    """The limits in force: the defaults, with $KOMPAKT_LIMITS overrides ("name=4M,...")."""
    text = os.environ.get(LIMITS_ENV, "").strip()
    if not text:
        return Limits()
    names = {f.name for f in dataclasses.fields(Limits)}
    values = {}
    for item in text.split(","):
        name, _, raw = item.partition("=")
        name, raw = name.strip(), raw.strip().upper()
        unit = raw[-1:] if raw[-1:] in _UNITS else ""
        number = raw[: len(raw) - len(unit)]
        if name not in names or not number.isdigit():
            raise KompaktError(
                f"${LIMITS_ENV}: {item!r} is not NAME=NUMBER[K|M|G]; names: {sorted(names)}"
            )
        values[name] = int(number) * _UNITS[unit]
    return Limits(**values)


def confined(bundle: Path, relative: str) -> Path:
    """`bundle / relative`, refusing absolute paths, `..`, NUL bytes and symlinks anywhere on
    the way, so the path cannot leave the bundle. It is *not* resolved: under a pinned bundle
    (`/proc/self/fd/N`) it keeps naming the file in the directory held open, even after a
    deploy swapped another bundle in at the same path (resolving it named the new bundle's file
    and refused it as "outside", or mixed two bundles)."""
    if not isinstance(relative, str) or "\x00" in relative or not relative:
        raise BundleError(f"manifest file path {relative!r} is not a valid relative path; refused")
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"manifest file path {relative!r} is not valid UTF-8; refused") from None
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or len(relative) > 1024:
        raise BundleError(f"manifest file path {relative!r} leaves the bundle directory; refused")
    current = bundle
    for part in parts:  # a symlink anywhere on the way could point outside
        if len(part) > 255:
            raise BundleError(f"manifest file path {relative[:60]!r}... has a name too long")
        current = current / part
        if current.is_symlink():
            raise BundleError(f"bundle path {relative!r} is a symlink; refused")
    return current


def open_regular(path: Path, what: str, max_bytes: int) -> tuple[int, os.stat_result]:
    """A descriptor on `path`, opened once without following a symlink and without blocking (a
    FIFO put in its place cannot hang us), refused unless a regular file of at most max_bytes.
    The caller closes it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise BundleError(f"{what} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{what} is not a regular file; refused")
        if info.st_size > max_bytes:
            raise BundleError(
                f"{what} has {info.st_size:,} bytes, above the limit of {max_bytes:,} (raise it "
                f"with {LIMITS_ENV}=...)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes, read once (see `open_regular`)."""
    fd, info = open_regular(path, what, max_bytes)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(min(info.st_size, max_bytes) + 1)


def _checked_entry(bundle: Path, entry: dict, keep: bool) -> bytes | None:
    # no cap here: the size must equal the manifest's, whose total `read_manifest` capped
    path = confined(bundle, entry["path"])
    fd, info = open_regular(path, f"bundle file {entry['path']}", 1 << 62)
    digest, data, size = hashlib.sha256(), [], 0
    with os.fdopen(fd, "rb") as handle:
        if info.st_size != entry["bytes"]:
            raise BundleError(
                f"bundle file {entry['path']} has {info.st_size} bytes, the manifest says "
                f"{entry['bytes']} (truncated or replaced); rebuild the bundle"
            )
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            size += len(chunk)
            if size > entry["bytes"]:
                break  # grew while being read
            digest.update(chunk)
            if keep:
                data.append(chunk)
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"].lower():
        raise BundleError(
            f"bundle file {entry['path']} does not match its sha256 in kompakt.json (corrupted, "
            "changed while being read, or changed without updating the manifest); rebuild the "
            "bundle"
        )
    return b"".join(data) if keep else None


def read_checked(bundle: Path, entry: dict) -> bytes:
    """The bytes of a hashed bundle file, read once and hashed from the bytes returned, so what
    was checked is what the caller uses (never re-opened by path afterwards)."""
    return _checked_entry(bundle, entry, keep=True)  # type: ignore[return-value]


def check_file(bundle: Path, entry: dict) -> None:
    """Hash a bundle file the caller does not keep (streamed, same checks as read_checked)."""
    _checked_entry(bundle, entry, keep=False)


def check_json_size(value: object, limit: Limits, where: str) -> None:
    """Refuse a parsed manifest with too many values, too deep, or too long a string (walked
    without recursion, so a hostile manifest cannot exhaust the stack either)."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > limit.json_values or depth > limit.json_depth:
            what = "values" if count > limit.json_values else "levels of nesting"
            raise BundleError(
                f"{where} has more {what} than the limit ({limit.json_values:,} values, depth "
                f"{limit.json_depth}); refused"
            )
        if isinstance(node, str) and len(node) > limit.string_chars:
            raise BundleError(f"{where} has a string of {len(node):,} characters; refused")
        if isinstance(node, dict):
            stack.extend((k, depth + 1) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def scan_directory(bundle: Path, manifest: dict, strict: bool, limit: Limits) -> None:
    """What is in the bundle directory besides what the manifest lists.

    Always refused: symlinks, FIFOs, devices and sockets anywhere, and more entries than the
    limit. Unlisted files and listed files with other hard links (a link to a file outside the
    bundle changes when that file does) are refused when `strict` (a signature is required:
    the signature covers only what is listed), and warned about otherwise. Directories that a
    backend writes caches into at run time (`cache_dirs`) may hold unlisted files.
    """
    listed = {entry["path"] for entry in manifest["files"].values()}
    caches = cache_dirs(manifest)
    found, pending = 0, [("", bundle)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for item in entries:
                found += 1
                if found > 4 * limit.files:
                    raise BundleError(f"the bundle holds more than {4 * limit.files} entries")
                relative = prefix + item.name
                info = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append((relative + "/", Path(directory) / item.name))
                elif stat.S_ISLNK(info.st_mode):
                    raise BundleError(f"bundle file {relative} is a symlink; refused")
                elif not stat.S_ISREG(info.st_mode):
                    raise BundleError(f"bundle entry {relative} is not a regular file; refused")
                elif relative in listed and info.st_nlink > 1:
                    _object(
                        strict,
                        f"bundle file {relative} has {info.st_nlink - 1} other hard link(s), so "
                        "it can change through a path outside the bundle; copy the bundle "
                        "without hard links (cp -r)",
                    )
                elif relative not in listed | {"kompakt.json"} and not any(
                    relative.startswith(c + "/") for c in caches
                ):
                    _object(
                        strict,
                        f"bundle file {relative} is not listed in kompakt.json (a signature does "
                        "not cover it); remove it or rebuild the bundle",
                    )


def cache_dirs(manifest: dict) -> set[str]:
    """Bundle folders a backend writes into at run time (the TensorRT EP's engine cache)."""
    options = (manifest.get("backend_options") or {}).get("provider_options") or {}
    paths = (options.get(k) for k in ("trt_engine_cache_path", "trt_timing_cache_path"))
    return {p.strip("/") for p in paths if isinstance(p, str) and p.strip("/")}


def _object(strict: bool, message: str) -> None:
    if strict:
        raise BundleError(message + "; refused (the bundle must be exactly what was signed)")
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class PinnedDirectory:
    """A bundle directory held open, so every file is read from the same directory even if a
    deploy swaps a new bundle in at the same path meanwhile (Linux: through /proc/self/fd, which
    the kernel resolves to the held directory like openat(fd, ...); other systems fall back to
    the plain path)."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        self.path = path
        proc = Path("/proc/self/fd")
        if proc.is_dir() and hasattr(os, "O_DIRECTORY") and path.is_dir():
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                self.path = proc / str(self.fd)
            except OSError:
                self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
