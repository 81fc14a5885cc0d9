"""Which signing keys a device (or ``edgekit verify``) accepts: several at once, some revoked.

A key is known by its id, ``ed25519:`` + the first 16 hex digits of sha256(raw 32-byte public key); the
manifest names the id so a verifier picks the key without trying each. Rotation = trust the new key, sign
with it, then revoke the old id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.errors import PackageError

REVOKED_FILE = "revoked.txt"


class TrustError(ValueError):
    """A trust file that cannot be used: missing, not an ed25519 public key."""


def raw_public_bytes(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    return "ed25519:" + hashlib.sha256(raw_public_bytes(public_key)).hexdigest()[:16]


def load_public_key(path: Path) -> Any:
    """Read a PEM (SubjectPublicKeyInfo) ed25519 public key as written by ``edgekit keys init``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read trusted key {path}: {exc.strerror}; pass the .pub file from keys init") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise TrustError(f"{path} is not a PEM public key; pass the .pub file written by edgekit keys init") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{path} holds a {type(key).__name__}, not an ed25519 key")
    return key


@dataclass(frozen=True)
class TrustStore:
    keys: dict[str, Any]
    revoked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def load(cls, sources: Iterable[Path | str], *, revoked: Iterable[str] = ()) -> TrustStore:
        """Trust each ``.pub`` file, or every ``*.pub`` in a directory (plus the ids in its ``revoked.txt``)."""
        keys: dict[str, Any] = {}
        gone = set(revoked)
        for source in map(Path, sources):
            if source.is_dir():
                files = sorted(source.glob("*.pub"))
                if not files:
                    raise TrustError(f"{source} holds no *.pub key; run edgekit keys init or pass a .pub file")
                listed = source / REVOKED_FILE
                if listed.exists():
                    gone.update(line.split("#")[0].strip() for line in listed.read_text().splitlines())
            else:
                files = [source]
            for path in files:
                key = load_public_key(path)
                keys[key_id(key)] = key
        if not keys:
            raise TrustError("no trusted key given; pass --trust KEY.pub")
        return cls(keys, frozenset(g for g in gone if g))

    def check_signature(self, kid: str, message: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        if kid in self.revoked:
            raise PackageError(
                "revoked-key", f"the package is signed by revoked key {kid}; re-sign it with a current key"
            )
        key = self.keys.get(kid)
        if key is None:
            raise PackageError(
                "untrusted-key",
                f"the package is signed by key {kid}, which is not trusted here (trusted: {sorted(self.keys)}); "
                "add its .pub to the trust list or sign with a trusted key",
            )
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise PackageError(
                "bad-signature", f"manifest signature does not verify with key {kid}: the manifest was modified"
            ) from None
