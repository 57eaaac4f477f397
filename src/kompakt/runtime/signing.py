"""Bundle signatures: what hashes cannot give.

Threat model. The sha256 of every file in `kompakt.json` catches corruption (a truncated copy,
a flipped bit) but not tampering: whoever can edit a file can recompute its hash and edit the
manifest. A signature can: the builder signs the canonical manifest (which lists every file's
sha256, so it covers every byte the runtime will read) with an Ed25519 private key, and the
runtime, given trusted public keys, refuses bundles that are unsigned or whose signature does
not match. Keys are the user's; kompakt never ships one. Signing needs `pip install
'kompakt[sign]'` (the `cryptography` package, a maintained Ed25519 implementation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from kompakt.errors import KompaktError
from kompakt.runtime.backends.base import require

TRUSTED_KEYS_ENV = "KOMPAKT_TRUSTED_KEYS"  # comma-separated public keys (base64) or key files
ALGORITHM = "ed25519"


class SignatureError(KompaktError):
    """A bundle is unsigned where a signature is required, or its signature does not match."""


def canonical_digest(manifest: dict) -> bytes:
    """sha256 over the manifest without its signature, keys sorted, no whitespace."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).digest()


def _ed25519():
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "sign", "bundle signatures")


def _key_bytes(text: str) -> bytes:
    """A key given as base64 text or as the path of a file holding it."""
    candidate = Path(text)
    if len(text) < 4096 and "\x00" not in text and candidate.is_file():
        text = candidate.read_text().strip()
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise SignatureError(f"a key must be 32 bytes in base64, got {text[:20]!r}...") from None
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 key is 32 bytes, this one has {len(raw)}")
    return raw


def generate_key() -> tuple[str, str]:
    """A new (private, public) Ed25519 key pair, each as base64 text."""
    from cryptography.hazmat.primitives import serialization

    ed = _ed25519()
    private = ed.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private_bytes = private.private_bytes(
        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public_bytes = private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private_bytes).decode(), base64.b64encode(public_bytes).decode()


def sign_manifest(manifest: dict, private_key: str) -> dict:
    """The manifest's signature record for a private key (base64 text or a key file)."""
    from cryptography.hazmat.primitives import serialization

    ed = _ed25519()
    private = ed.Ed25519PrivateKey.from_private_bytes(_key_bytes(private_key))
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(public).decode(),
        "value": base64.b64encode(private.sign(canonical_digest(manifest))).decode(),
    }


def trusted_keys(keys: list[str] | None = None) -> list[str]:
    """The keys given, else those in $KOMPAKT_TRUSTED_KEYS (empty: no signature required)."""
    if keys:
        return list(keys)
    env = os.environ.get(TRUSTED_KEYS_ENV, "")
    return [k.strip() for k in env.split(",") if k.strip()]


def check_signature(manifest: dict, keys: list[str]) -> str | None:
    """With trusted keys, require a valid signature by one of them; returns the signer's key.

    Raises:
        SignatureError: unsigned, another algorithm, an untrusted signer, or a bad signature.
    """
    if not keys:
        return None
    signature = manifest.get("signature")
    if not isinstance(signature, dict):
        raise SignatureError(
            "this bundle is unsigned and trusted keys are configured; sign it with "
            "`kompakt deploy ... --sign-key KEY` (or unset KOMPAKT_TRUSTED_KEYS to accept it)"
        )
    if signature.get("algorithm") != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {signature.get('algorithm')!r}")
    trusted = {base64.b64encode(_key_bytes(k)).decode() for k in keys}
    signer = signature.get("public_key")
    if signer not in trusted:
        raise SignatureError("the bundle is signed by a key that is not among the trusted keys")
    ed = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        public = ed.Ed25519PublicKey.from_public_bytes(_key_bytes(signer))
        public.verify(base64.b64decode(signature.get("value", "")), canonical_digest(manifest))
    except (InvalidSignature, ValueError):
        raise SignatureError(
            "the bundle's signature does not match its manifest: it was changed after signing; "
            "rebuild and re-sign it"
        ) from None
    return signer
