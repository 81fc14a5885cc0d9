"""Write a signed .edgepkg from a packaged output directory (model files, sample/, report.json).

The package is a pure function of its inputs: the directory's bytes, the key, name, version, counter and the
issued/expiry times. Nothing reads the clock unless no time is given (then ``$SOURCE_DATE_EPOCH`` or now), and
ed25519 signatures are deterministic, so building twice gives the same bytes. The file is written next to
its destination and renamed into place, so a failed build never leaves a half package or loses the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_file
from edgekit.errors import PackageSourceInvalid
from edgekit.keys import load_signing_key

PACKAGE_SECTION = "package"  # the part of report.json that says what goes into the package
# report.json fields that describe this host's run, not the model: kept out of the manifest so the package
# does not depend on where it was built.
_HOST_ONLY = {PACKAGE_SECTION, "output_dir", "package_path", "dry_run"}


@dataclass(frozen=True)
class Signing:
    """Who signs, and the identity the package gets: everything but the packaged directory's bytes."""

    key: Path
    name: str | None = None
    version: str | None = None
    counter: int | None = None
    issued_at: datetime | None = None
    expires_in: timedelta = timedelta(days=365)
    passphrase: str | None = None


@dataclass(frozen=True)
class SealResult:
    path: Path
    sha256: str
    size: int
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        keys = ("name", "version", "counter", "profile", "key_id", "issued_at", "expires_at")
        return {"path": str(self.path), "sha256": self.sha256, "size": self.size} | {k: self.manifest[k] for k in keys}


def issued_now() -> datetime:
    """``$SOURCE_DATE_EPOCH`` (reproducible builds) or the current time, to the second."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.replace(microsecond=0)


def _read_report(source: Path) -> dict[str, Any]:
    try:
        report = json.loads((source / "report.json").read_text())
    except FileNotFoundError:
        raise PackageSourceInvalid(
            f"{source} has no report.json; give a directory written by edgekit package"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageSourceInvalid(f"cannot read {source}/report.json ({exc}); re-run edgekit package") from None
    if PACKAGE_SECTION not in report:
        raise PackageSourceInvalid(
            f"{source}/report.json has no '{PACKAGE_SECTION}' section (an older edgekit wrote it); "
            "re-run edgekit package"
        )
    return report


def manifest_for(
    report: dict[str, Any],
    files: dict[str, bytes],
    *,
    key_id: str,
    name: str,
    version: str,
    counter: int,
    issued_at: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    from edgekit_agent.manifest import FORMAT, format_time

    spec = report[PACKAGE_SECTION]
    engine, device = report["runtime"].split(":", 1)
    compression = {k: v for k, v in report.items() if k not in _HOST_ONLY}
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "counter": counter,
        "profile": report["profile"],
        "runtime": {
            "engine": engine,
            "device": device,
            "precision": report["precision"],
            "config": report.get("runtime_config") or {},
        },
        "model": spec["model"],
        "inputs": spec["inputs"],
        "outputs": spec["outputs"],
        "preprocessing": spec.get("preprocessing", {}),
        "postprocessing": spec.get("postprocessing", {}),
        "sample": spec["sample"],
        "files": [
            {"path": p, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for p, data in sorted(files.items())
        ],
        "report": compression,
        "issued_at": format_time(issued_at),
        "expires_at": format_time(expires_at),
        "key_id": key_id,
    }


def write_edgepkg(source: Path, out: Path, signing: Signing) -> SealResult:
    """Sign the package described by ``source/report.json`` into ``out`` (replaced atomically).

    ``out`` may be a directory: the file is then named ``NAME-VERSION.edgepkg`` inside it.
    """
    from edgekit_agent import manifest as mf
    from edgekit_agent import tarfmt
    from edgekit_agent.errors import PackageError

    signing_key, kid = load_signing_key(signing.key, passphrase=signing.passphrase)
    report = _read_report(source)
    files: dict[str, bytes] = {}
    for rel in report[PACKAGE_SECTION]["files"]:
        try:
            files[tarfmt.check_name(rel)] = (source / rel).read_bytes()
        except OSError as exc:
            raise PackageSourceInvalid(f"{source / rel}: {exc.strerror}; re-run edgekit package") from None
        except PackageError as exc:
            raise PackageSourceInvalid(f"cannot package {rel!r}: {exc}") from None
    issued, counter = _issue(signing)
    raw = manifest_for(
        report,
        files,
        key_id=kid,
        name=signing.name or report["model"],
        version=signing.version or str(counter),
        counter=counter,
        issued_at=issued,
        expires_at=issued + signing.expires_in,
    )
    try:
        mf.parse(raw)  # never sign what a device would refuse
    except PackageError as exc:
        raise PackageSourceInvalid(f"the package would be invalid: {exc}") from None
    if out.is_dir():
        out = out / f"{raw['name']}-{raw['version']}.edgepkg"
    return _seal(raw, files, signing_key, out)


def _issue(signing: Signing) -> tuple[datetime, int]:
    """(issue time to the second, counter): the counter defaults to the issue time in Unix seconds."""
    issued = (signing.issued_at or issued_now()).astimezone(UTC).replace(microsecond=0)
    return issued, signing.counter if signing.counter is not None else int(issued.timestamp())


def _seal(raw: dict[str, Any], files: dict[str, bytes], signing_key: Any, out: Path) -> SealResult:
    """Sign ``raw``'s exact bytes and write the canonical tar to ``out`` (replaced atomically)."""
    from edgekit_agent import manifest as mf
    from edgekit_agent import tarfmt

    class _Hashing:
        def __init__(self, fh: Any) -> None:
            self.fh, self.hash = fh, hashlib.sha256()

        def write(self, data: bytes) -> None:
            self.hash.update(data)
            self.fh.write(data)

    manifest_bytes = mf.dumps(raw)
    entries = [(mf.MANIFEST, manifest_bytes), (mf.SIGNATURE, signing_key.sign(manifest_bytes)), *sorted(files.items())]
    with atomic_file(out) as fh:
        sink = _Hashing(fh)
        tarfmt.write(sink, entries)
    return SealResult(out, sink.hash.hexdigest(), out.stat().st_size, raw)


def reissue(package: Path, out_dir: Path, signing: Signing) -> SealResult:
    """The same model bytes under a new counter: how a rollout rolls devices *back*.

    Devices refuse any counter not above the one they run (anti-rollback), and a desired message is not
    signed, so going back to an old model must be an explicit, signed statement by the owner: a new
    package whose files are the old one's, with a fresh counter, issue time and the current key. The old
    package's file hashes are checked on the way (its signature may be from a since-rotated key).
    """
    from edgekit_agent import manifest as mf
    from edgekit_agent.verify import verify_package

    signing_key, kid = load_signing_key(signing.key, passphrase=signing.passphrase)
    with tempfile.TemporaryDirectory(prefix="edgekit-reissue-") as tmp:
        verified = verify_package(package, trust=None, dest=Path(tmp) / "pkg")
        raw = mf.load_json(verified.manifest_bytes)
        files = {f.path: (verified.directory / f.path).read_bytes() for f in verified.manifest.files}
    issued, counter = _issue(signing)
    if counter <= verified.manifest.counter:
        counter = verified.manifest.counter + 1
    raw |= {
        "counter": counter,
        "issued_at": mf.format_time(issued),
        "expires_at": mf.format_time(issued + signing.expires_in),
        "key_id": kid,
    }
    mf.parse(raw)
    return _seal(raw, files, signing_key, out_dir / f"{raw['name']}-{raw['version']}-r{counter}.edgepkg")
