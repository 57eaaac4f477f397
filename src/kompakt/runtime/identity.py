"""A bundle's identity and needs: what an app can require before it runs one (substitution and
rollback), and the backend version the bundle requires (`requires`).

The manifest records `bundle: {"name", "version"}` (deploy's --bundle-name / --bundle-version;
by default the output folder's name and the build time in seconds, so a rebuild is always a
higher version). With a signature the identity is signed with everything else, so `expect`
cannot be met by a bundle of another name, an older version or other content; without one it
is only a label anyone can edit.
"""

from __future__ import annotations

import re

from kompakt.errors import ConfigError
from kompakt.runtime.files import BundleError

# NAME, NAME@VERSION, NAME@>=VERSION, or sha256:DIGEST (the canonical manifest digest)
_EXPECT = re.compile(
    r"^(?:sha256:(?P<digest>[0-9a-f]{64})|(?P<name>[^@\s]+)(?:@(?P<op>>=)?(?P<version>\d+))?)$"
)


def identity(manifest: dict) -> dict:
    """{"name", "version", "digest", "signed"}; name / version are None for older bundles."""
    from kompakt.runtime.signing import canonical_digest

    record = manifest.get("bundle") or {}
    return {
        "name": record.get("name"),
        "version": record.get("version"),
        "digest": canonical_digest(manifest).hex(),
        "signed": isinstance(manifest.get("signature"), dict),
    }


def parse_expect(expect: str) -> dict:
    """The parts of an expectation string; a one-line ConfigError when it is none of the forms."""
    match = _EXPECT.match(expect.strip()) if isinstance(expect, str) else None
    if not match:
        raise ConfigError(
            f"expect {expect!r} must be NAME, NAME@VERSION, NAME@>=VERSION or sha256:DIGEST"
        )
    parts = match.groupdict()
    if parts["version"] is not None:
        parts["version"] = int(parts["version"])
    return parts


def check_expected(manifest: dict, expect: str | None) -> None:
    """Refuse a bundle that is not the one expected (another name, an older version than
    NAME@>=N allows, another exact version, other content).

    Raises:
        BundleError: naming what was expected and what the bundle is.
    """
    if expect is None:
        return
    want = parse_expect(expect)
    have = identity(manifest)
    if want["digest"]:
        if have["digest"] != want["digest"]:
            raise BundleError(
                f"the bundle's manifest digest is {have['digest'][:16]}..., expected "
                f"{want['digest'][:16]}...: this is another bundle; refused"
            )
        return
    shown = f"{have['name']}@{have['version']}"
    if have["name"] != want["name"]:
        raise BundleError(f"the bundle is {shown}, expected {want['name']}; refused")
    if want["version"] is None:
        return
    version = have["version"]
    if want["op"] == ">=" and (version is None or version < want["version"]):
        raise BundleError(
            f"the bundle is {shown}, older than the {want['name']}@>={want['version']} "
            "expected (a rollback); refused"
        )
    if want["op"] is None and version != want["version"]:
        raise BundleError(f"the bundle is {shown}, expected {expect}; refused")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    """The installed version of a backend distribution (either ONNX Runtime wheel counts as
    `onnxruntime`: they share the module)."""
    from kompakt.machine import package_version

    names = ("onnxruntime", "onnxruntime-gpu") if distribution == "onnxruntime" else (distribution,)
    return next((v for v in map(package_version, names) if v), None)


def check_requirements(manifest: dict) -> None:
    """Refuse a bundle whose `requires` the installed backend does not meet (`>=X.Y` only).

    Raises:
        BundleError: naming the version needed, the one installed, and both fixes.
    """
    for distribution, spec in (manifest.get("requires") or {}).items():
        if not isinstance(spec, str) or not spec.startswith(">="):
            raise BundleError(f"requires {distribution}: {spec!r} is not '>=X.Y'; rebuild")
        here = installed_version(distribution)
        needed = spec[2:].strip()
        if here is not None and _version(here) < _version(needed):
            raise BundleError(
                f"this bundle needs {distribution} {spec} (its {manifest.get('precision')} graph "
                f"was saved by that version), but {here} is installed: pip install "
                f"'{distribution}{spec}', or rebuild the bundle here with kompakt deploy"
            )
