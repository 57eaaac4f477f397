"""The bundle manifest (`kompakt.json`): schema, validation, hashing, path confinement.

Imports only the standard library, so apps that embed `kompakt.runtime` stay lean.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from kompakt._io import sha256_file
from kompakt.runtime.files import (
    BundleError,
    Limits,
    PinnedDirectory,
    check_file,
    check_json_size,
    confined,
    limits,
    read_checked,
    read_regular,
    scan_directory,
)

__all__ = [  # the file helpers are re-exported: callers know them from here
    "MANIFEST",
    "SCHEMA_VERSION",
    "BundleError",
    "PinnedDirectory",
    "check_schema",
    "confined",
    "read_checked",
    "read_manifest",
    "sha256_file",
    "validate_manifest",
]

SCHEMA_VERSION = 1
MANIFEST = "kompakt.json"


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


def _interrupted(bundle: Path) -> str:
    old = bundle.with_name(f".{bundle.name}.old")
    if (old / MANIFEST).is_file():
        return (
            f"; a replacement of this bundle was interrupted: the previous bundle is in {old} "
            f"(move it back to {bundle}, or deploy again)"
        )
    return ""


def parse_manifest(bundle: Path, limit: Limits) -> dict:
    """kompakt.json read once (a regular file, size-capped before parsing), parsed, its size in
    values / depth / string length checked, then validated against the schema."""
    path = bundle / MANIFEST
    if path.is_symlink():
        raise BundleError(f"{bundle}: its {MANIFEST} must not be a symlink")
    if not os.path.lexists(path):
        raise BundleError(
            f"{bundle} is not a kompakt bundle: {MANIFEST} is missing{_interrupted(bundle)}"
        )
    data = read_regular(path, f"{bundle.name}/{MANIFEST}", limit.manifest_bytes)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"{path} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    check_json_size(manifest, limit, MANIFEST)
    files = manifest.get("files")
    if isinstance(files, dict) and len(files) > limit.files:  # before walking each entry
        raise BundleError(f"{MANIFEST} lists {len(files):,} files, above the limit {limit.files}")
    validate_manifest(manifest)
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    if total > limit.total_bytes:
        raise BundleError(
            f"{MANIFEST} lists {total:,} bytes of files, above the limit {limit.total_bytes:,} "
            "(raise it with KOMPAKT_LIMITS=total_bytes=...)"
        )
    return manifest


def read_manifest(
    bundle: str | Path,
    verify: bool = True,
    trusted_keys: list[str] | None = None,
    pinned: bool = False,
) -> dict:
    """Load, validate and (by default) verify every file's sha256 and size.

    Hashes catch corruption; with trusted keys (or $KOMPAKT_TRUSTED_KEYS) the manifest's
    signature must also match, which catches tampering (see kompakt.runtime.signing), and the
    directory must hold exactly the files the manifest lists.

    Raises:
        BundleError: naming the file that is missing, corrupted, a symlink, unlisted, or over
            a limit (see `files.Limits`).
        SignatureError: trusted keys are configured and the bundle is unsigned or mis-signed.
    """
    from kompakt.runtime.signing import check_signature
    from kompakt.runtime.signing import trusted_keys as configured_keys

    bundle = Path(bundle)
    if bundle.is_symlink() and not pinned:
        raise BundleError(f"{bundle}: the bundle must not be a symlink")
    limit = limits()
    manifest = parse_manifest(bundle, limit)
    keys = configured_keys(trusted_keys)
    check_signature(manifest, keys)
    listed = set(manifest["files"])
    golden = manifest.get("golden") or {}
    opened = {manifest["artifact"], *manifest.get("artifact_files", [])}
    for name in opened | ({golden["file"]} if "file" in golden else set()):
        if name not in listed:
            raise BundleError(
                f"manifest file {name!r} is not among the hashed files; the runtime opens "
                "no file the manifest does not hash: rebuild the bundle"
            )
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema_version {manifest['schema_version']} is newer than this kompakt "
            f"understands ({SCHEMA_VERSION}); upgrade kompakt"
        )
    for entry in manifest["files"].values():
        confined(bundle, entry["path"])
    scan_directory(bundle, manifest, strict=bool(keys), limit=limit)
    if verify:
        for entry in manifest["files"].values():
            check_file(bundle, entry)
    return manifest
