"""The bundle manifest (`kompakt.json`): schema, validation, hashing, path confinement.

Imports only the standard library, so apps that embed `kompakt.runtime` stay lean.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from kompakt._io import sha256_file
from kompakt.errors import KompaktError

SCHEMA_VERSION = 1
MANIFEST = "kompakt.json"


class BundleError(KompaktError):
    """A bundle is missing, tampered with, truncated or malformed."""


def manifest_schema() -> dict:
    """The JSON schema of `kompakt.json` (shipped with the package)."""
    text = resources.files("kompakt.runtime").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _check(value: object, schema: dict, where: str, root: dict) -> None:
    """A small JSON-schema subset (type, required, properties, items, enum, const, minimum,
    local $ref): enough for the manifest, with no dependency the runtime would have to carry."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        # bool is an int in Python, never a number in JSON
        ok = any(
            isinstance(value, _TYPES[n])
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
        )
        if not ok:
            raise BundleError(f"manifest {where}: expected {' or '.join(names)}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise BundleError(f"manifest {where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        raise BundleError(f"manifest {where}: expected {schema['const']!r}, got {value!r}")
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        raise BundleError(f"manifest {where}: {value} is below {schema['minimum']}")
    if "minItems" in schema and isinstance(value, list) and len(value) < schema["minItems"]:
        raise BundleError(f"manifest {where}: needs at least {schema['minItems']} item(s)")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise BundleError(f"manifest {where}: missing required key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}", root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in schema.get("properties", {}):
                    _check(item, extra, f"{where}.{key}", root)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", root)


def check_schema(value: object, schema: dict, name: str) -> None:
    """Raise BundleError if `value` does not follow `schema` (the subset `_check` knows)."""
    _check(value, schema, name, schema)


def validate_manifest(manifest: dict) -> None:
    """Raise BundleError if `manifest` does not follow the schema."""
    check_schema(manifest, manifest_schema(), "kompakt.json")


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


def read_checked(bundle: Path, entry: dict) -> bytes:
    """The bytes of a hashed bundle file, read once: `confined` path, opened without following
    a symlink and without blocking (a FIFO put in its place cannot hang us), refused unless a
    regular file of exactly the manifest's size, and hashed from the bytes returned, so what
    was checked is what the caller uses."""
    import hashlib
    import stat

    path = confined(bundle, entry["path"])
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise BundleError(
            f"bundle file {entry['path']} cannot be opened: {error.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"bundle file {entry['path']} is not a regular file; refused")
        if info.st_size != entry["bytes"]:
            raise BundleError(
                f"bundle file {entry['path']} has {info.st_size} bytes, the manifest says "
                f"{entry['bytes']} (truncated or replaced); rebuild the bundle"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(entry["bytes"] + 1)
    finally:
        os.close(fd)
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"].lower():
        raise BundleError(
            f"bundle file {entry['path']} does not match its sha256 in {MANIFEST} (changed "
            "while being read, or corrupted); rebuild the bundle"
        )
    return data


def _interrupted(bundle: Path) -> str:
    old = bundle.with_name(f".{bundle.name}.old")
    if (old / MANIFEST).is_file():
        return (
            f"; a replacement of this bundle was interrupted: the previous bundle is in {old} "
            f"(move it back to {bundle}, or deploy again)"
        )
    return ""


class PinnedDirectory:
    """A bundle directory held open, so every file is read from the same directory even if a
    deploy swaps a new bundle in at the same path meanwhile (Linux: through /proc/self/fd; other
    systems fall back to the plain path)."""

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


def read_manifest(
    bundle: str | Path,
    verify: bool = True,
    trusted_keys: list[str] | None = None,
    pinned: bool = False,
) -> dict:
    """Load, validate and (by default) verify every file's sha256 and size.

    Hashes catch corruption; with trusted keys (or $KOMPAKT_TRUSTED_KEYS) the manifest's
    signature must also match, which catches tampering (see kompakt.runtime.signing).

    Raises:
        BundleError: naming the file that is missing, corrupted, a symlink or unlisted.
        SignatureError: trusted keys are configured and the bundle is unsigned or mis-signed.
    """
    from kompakt.runtime.signing import check_signature
    from kompakt.runtime.signing import trusted_keys as configured_keys

    bundle = Path(bundle)
    path = bundle / MANIFEST
    if (bundle.is_symlink() and not pinned) or path.is_symlink():
        raise BundleError(f"{bundle}: the bundle and its {MANIFEST} must not be symlinks")
    if not path.is_file():
        raise BundleError(
            f"{bundle} is not a kompakt bundle: {MANIFEST} is missing{_interrupted(bundle)}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"{path} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    validate_manifest(manifest)
    check_signature(manifest, configured_keys(trusted_keys))
    listed = set(manifest["files"])
    golden = manifest.get("golden") or {}
    opened = {manifest["artifact"], *manifest.get("artifact_files", [])}
    for name in opened | ({golden["file"]} if "file" in golden else set()):
        if name not in listed:
            raise BundleError(
                f"manifest file {name!r} is not among the hashed files; the runtime opens "
                "no file the manifest does not hash: rebuild the bundle"
            )
    for link in (p for p in bundle.rglob("*") if p.is_symlink()):
        raise BundleError(f"bundle file {link.relative_to(bundle)} is a symlink; refused")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema_version {manifest['schema_version']} is newer than this kompakt "
            f"understands ({SCHEMA_VERSION}); upgrade kompakt"
        )
    for entry in manifest["files"].values():
        file = confined(bundle, entry["path"])
        if not verify:
            continue
        if not file.is_file():
            raise BundleError(f"bundle file {entry['path']} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"bundle file {entry['path']} has {size} bytes, the manifest says "
                f"{entry['bytes']} (truncated or replaced); rebuild the bundle"
            )
        if sha256_file(file) != entry["sha256"].lower():
            raise BundleError(
                f"bundle file {entry['path']} does not match its sha256 in {MANIFEST} "
                "(corrupted, or changed without updating the manifest); rebuild the bundle"
            )
    return manifest
