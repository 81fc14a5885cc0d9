"""ed25519 signing keys: create, show, load for signing.

The private key is PKCS#8 PEM, created with mode 0600 (O_EXCL, so an existing key is never overwritten) and
encrypted when a passphrase is given; the public key is SubjectPublicKeyInfo PEM, the file devices trust.
Key ids come from ``edgekit_agent.trust`` so host and device compute them with the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import KeyExists, KeyInvalid, KeyNotFound

PASSPHRASE_ENV = "EDGEKIT_KEY_PASSPHRASE"
DEFAULT_NAME = "edgekit"


def default_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME", Path.home() / ".edgekit")) / "keys"


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    private_path: Path
    public_path: Path
    encrypted: bool
    public_pem: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "private_key": str(self.private_path),
            "public_key": str(self.public_path),
            "encrypted": self.encrypted,
            "public_pem": self.public_pem,
        }


def _paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.key", directory / f"{name}.pub"


def init_keys(directory: Path | None = None, *, name: str = DEFAULT_NAME, passphrase: str | None = None) -> KeyInfo:
    """Create ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``; refuses to replace an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = directory or default_dir()
    private_path, public_path = _paths(directory, name)
    for path in (private_path, public_path):
        if path.exists():
            raise KeyExists(f"{path} already exists; keys are never overwritten (choose another --name or --dir)")
    key = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise KeyInvalid(f"cannot write keys into {directory}: {exc.strerror}; choose a writable --dir") from None
    return show_key(directory, name=name)


def show_key(directory: Path | None = None, *, name: str = DEFAULT_NAME) -> KeyInfo:
    from edgekit_agent.trust import TrustError, key_id, load_public_key

    directory = directory or default_dir()
    private_path, public_path = _paths(directory, name)
    if not public_path.exists():
        raise KeyNotFound(f"no key {name!r} in {directory}; create one with: edgekit keys init --dir {directory}")
    try:
        public = load_public_key(public_path)
    except TrustError as exc:
        raise KeyInvalid(str(exc)) from None
    encrypted = private_path.exists() and b"ENCRYPTED" in private_path.read_bytes()[:64]
    return KeyInfo(key_id(public), private_path, public_path, encrypted, public_path.read_text())


def load_signing_key(path: Path, *, passphrase: str | None = None) -> tuple[Any, str]:
    """The private key at ``path`` and its key id; the passphrase defaults to $EDGEKIT_KEY_PASSPHRASE."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from edgekit_agent.trust import key_id

    passphrase = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyNotFound(
            f"cannot read signing key {path}: {exc.strerror}; create one with edgekit keys init"
        ) from None
    encrypted = b"ENCRYPTED" in data[:64]
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase.encode() if encrypted and passphrase else None
        )
    except TypeError:
        raise KeyInvalid(f"{path} is encrypted; set {PASSPHRASE_ENV} to its passphrase") from None
    except ValueError:
        raise KeyInvalid(
            f"cannot load {path}: not a PEM private key or wrong passphrase (check {PASSPHRASE_ENV})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyInvalid(f"{path} holds a {type(key).__name__}; edgekit signs with ed25519 (edgekit keys init)")
    return key, key_id(key.public_key())
