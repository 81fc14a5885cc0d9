"""Verify an .edgepkg in one front-to-back read, and unpack exactly the bytes that were verified.

Order (docs/package-format.md): the first entry must be ``manifest.json``, the second ``manifest.sig``; the
signature and every policy check (trusted and not revoked key, format, validity window, counter, profile,
size limits) pass before a single model byte is read. Each following entry must be listed in the manifest,
in order, with the declared size; it is hashed as it streams into a private staging directory, so the bytes
on disk are the bytes that were hashed and nothing re-reads the package. Only when everything matched is the
staging directory renamed to ``dest``; on any failure it is removed, so nothing is left behind.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import posixpath
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from edgekit_agent.errors import PackageError
from edgekit_agent.manifest import MANIFEST, RESERVED, SIGNATURE, Manifest, key_id_of, load_json, parse
from edgekit_agent.onnxcheck import OnnxFormatError, external_locations
from edgekit_agent.tarfmt import Reader, check_name
from edgekit_agent.trust import TrustStore

SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Limits:
    """Sizes a verifier accepts; anything larger is refused before it is read."""

    max_manifest_bytes: int = 1 << 20
    max_file_bytes: int = 4 << 30
    max_total_bytes: int = 8 << 30
    max_files: int = 256
    clock_skew: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    manifest_bytes: bytes
    sha256: str  # of the whole package, as read
    size: int
    directory: Path | None  # where the files were unpacked, when a destination was given
    signature_checked: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "sha256": self.sha256,
            "size": self.size,
            "signature": "verified" if self.signature_checked else "not checked (no trusted key given)",
            "directory": str(self.directory) if self.directory else None,
            **self.manifest.summary(),
        }


class _HashingStream:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        self.hash.update(data)
        return data


def _check_policy(m: Manifest, *, profile: str | None, min_counter: int | None, now: datetime, limits: Limits) -> None:
    if now + limits.clock_skew < m.issued_at:
        raise PackageError(
            "not-yet-valid", f"the package is valid from {m.summary()['issued_at']} (now {now:%Y-%m-%dT%H:%M:%SZ}); "
            "check the device clock or the package's issued_at",
        )  # fmt: skip
    if now >= m.expires_at:
        raise PackageError("expired", f"the package expired at {m.summary()['expires_at']}; build and sign a fresh one")
    if profile is not None and m.profile != profile:
        raise PackageError(
            "wrong-profile", f"the package targets profile {m.profile!r}, this device is {profile!r}; "
            "package the model for this profile",
        )  # fmt: skip
    if min_counter is not None and m.counter < min_counter:
        raise PackageError(
            "replayed-counter",
            f"counter {m.counter} is below the minimum {min_counter} (a replay or rollback of an older package); "
            "build a new package with a higher --counter",
        )
    if len(m.files) > limits.max_files:
        raise PackageError("size-limit", f"{len(m.files)} files is over the limit of {limits.max_files}")
    for f in m.files:
        if f.size > limits.max_file_bytes:
            raise PackageError(
                "size-limit", f"{f.path!r} declares {f.size} bytes, over the limit {limits.max_file_bytes}"
            )
    total = sum(f.size for f in m.files)
    if total > limits.max_total_bytes:
        raise PackageError(
            "size-limit", f"the files declare {total} bytes in all, over the limit {limits.max_total_bytes}"
        )


def _check_external_data(m: Manifest, staged: dict[str, Path]) -> None:
    listed = {f.path for f in m.files}
    for path, file in staged.items():
        try:
            with open(file, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    raise PackageError("bad-entry", f"{path!r} is empty, not an ONNX model")
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    locations = external_locations(view)
        except OnnxFormatError as exc:
            raise PackageError("bad-entry", f"{path!r} is not a readable ONNX model ({exc})") from None
        for location in locations:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(path), location))
            try:
                check_name(location)
            except PackageError:
                raise PackageError(
                    "external-data", f"{path!r} points its external data at {location!r}, outside the package"
                ) from None
            if target not in listed:
                raise PackageError(
                    "external-data", f"{path!r} points its external data at {location!r}, which the package lacks"
                )


def _write_entry(reader: Reader, root: Path, name: str, size: int, *, sync: bool) -> str:
    """Stream one entry into ``root/name`` while hashing it; returns the hex sha256."""
    digest = hashlib.sha256()
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        for chunk in reader.read_data(size, name):
            digest.update(chunk)
            fh.write(chunk)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def verify_package(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    trust: TrustStore | None,
    profile: str | None = None,
    min_counter: int | None = None,
    now: datetime | None = None,
    limits: Limits = Limits(),
    dest: str | os.PathLike[str] | None = None,
) -> Verified:
    """Verify ``source`` (a path or a readable binary stream, read once) and optionally unpack it to ``dest``.

    ``trust=None`` skips the signature (``edgekit inspect`` without keys); a device always passes its store.
    ``dest`` must not exist; it appears, complete, only when every check passed. Raises only PackageError.
    """
    now = now or datetime.now(UTC)
    final = Path(dest) if dest is not None else None
    if final is not None and (final.exists() or final.is_symlink()):
        raise PackageError("destination-exists", f"{final} already exists; unpack only into a fresh directory")
    with ExitStack() as stack:
        if isinstance(source, str | os.PathLike):
            try:
                stream: BinaryIO = stack.enter_context(open(source, "rb"))
            except OSError as exc:
                raise PackageError("io-error", f"cannot open {source}: {exc.strerror}") from None
        else:
            stream = source
        hashing = _HashingStream(stream)
        reader = Reader(hashing)
        entries = reader.entries()
        first = next(entries, None)
        if first is None or first[0] != MANIFEST:
            raise PackageError("missing-manifest", "the package does not start with manifest.json; rebuild it")
        if first[1] > limits.max_manifest_bytes:
            raise PackageError("size-limit", f"manifest.json is {first[1]} bytes, over {limits.max_manifest_bytes}")
        manifest_bytes = b"".join(reader.read_data(first[1], MANIFEST))
        second = next(entries, None)
        if second is None or second[0] != SIGNATURE:
            raise PackageError("missing-signature", "the package has no manifest.sig after manifest.json; sign it")
        if second[1] != SIGNATURE_BYTES:
            raise PackageError("bad-signature", f"manifest.sig is {second[1]} bytes, an ed25519 signature is 64")
        signature = b"".join(reader.read_data(SIGNATURE_BYTES, SIGNATURE))
        raw = load_json(manifest_bytes)
        if trust is not None:
            trust.check_signature(key_id_of(raw), manifest_bytes, signature)
        manifest = parse(raw)
        _check_policy(manifest, profile=profile, min_counter=min_counter, now=now, limits=limits)

        if final is not None:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
            except OSError as exc:
                raise PackageError("io-error", f"cannot create a directory next to {final}: {exc.strerror}") from None
        else:
            root = Path(tempfile.mkdtemp(prefix="edgekit-verify-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        if final is not None:  # an installed version keeps its manifest: the agent reloads it after a restart
            try:
                (root / MANIFEST).write_bytes(manifest_bytes)
                (root / SIGNATURE).write_bytes(signature)
            except OSError as exc:
                raise PackageError("io-error", f"cannot write under {root.parent}: {exc.strerror}") from None
        expected = {f.path: f for f in manifest.files}
        seen: list[str] = []
        staged: dict[str, Path] = {}
        for name, size in entries:
            if name in RESERVED or name in seen:
                raise PackageError("duplicate-entry", f"the package holds {name!r} twice; rebuild it")
            entry = expected.get(name)
            if entry is None:
                raise PackageError("unlisted-file", f"{name!r} is in the package but not in the signed manifest")
            if seen and name < seen[-1]:
                raise PackageError("out-of-order", f"{name!r} comes after {seen[-1]!r}; entries must be sorted")
            if size != entry.size:
                raise PackageError(
                    "hash-mismatch", f"{name!r} is {size} bytes, the manifest says {entry.size}: the file was modified"
                )
            keep = final is not None or name.endswith(".onnx")
            try:
                if keep:
                    digest = _write_entry(reader, root, name, size, sync=final is not None)
                    staged[name] = root / name
                else:
                    h = hashlib.sha256()
                    for chunk in reader.read_data(size, name):
                        h.update(chunk)
                    digest = h.hexdigest()
            except OSError as exc:
                raise PackageError(
                    "io-error", f"cannot write {name!r} under {root.parent}: {exc.strerror}; free space and retry"
                ) from None
            if digest != entry.sha256:
                raise PackageError("hash-mismatch", f"sha256 of {name!r} does not match the manifest: it was modified")
            seen.append(name)
        missing = sorted(set(expected) - set(seen))
        if missing:
            raise PackageError("missing-file", f"the manifest lists {missing} but the package lacks them; rebuild it")
        _check_external_data(manifest, {k: v for k, v in staged.items() if k.endswith(".onnx")})
        directory = None
        if final is not None:
            try:
                os.chmod(root, 0o755)
                root.rename(final)
                fd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise PackageError("io-error", f"cannot move the unpacked package to {final}: {exc.strerror}") from None
            directory = final
        return Verified(
            manifest=manifest,
            manifest_bytes=manifest_bytes,
            sha256=hashing.hash.hexdigest(),
            size=reader.bytes_read,
            directory=directory,
            signature_checked=trust is not None,
        )


def read_manifest(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest object of a package, UNVERIFIED: for showing what a refused package claims to be."""
    try:
        with open(source, "rb") as stream:
            reader = Reader(stream)
            first = next(reader.entries(), None)
            if first is None or first[0] != MANIFEST or first[1] > Limits().max_manifest_bytes:
                raise PackageError("missing-manifest", "the package does not start with manifest.json")
            return load_json(b"".join(reader.read_data(first[1], MANIFEST)))
    except OSError as exc:
        raise PackageError("io-error", f"cannot open {source}: {exc.strerror}") from None
