"""The one error type package verification raises.

Every refusal is a ``PackageError`` with a stable ``reason`` code (listed in docs/package-format.md) and a
one-line message that names the problem and the fix. Callers (the agent, ``edgekit verify``) catch this
type only: anything else escaping the verifier is a bug, and the fuzz test looks for exactly that.
"""

from __future__ import annotations

REASONS = (
    "not-a-package",  # empty, a zip, gzip data, not a tar at all
    "truncated",  # the file ends inside a header, a file or before the end-of-archive blocks
    "bad-entry",  # a header that is not the canonical edgepkg ustar header, trailing bytes
    "unsafe-path",  # ../, an absolute path, a name outside the allowed characters
    "link-entry",  # symlink, hardlink, device, fifo, directory or extension entries
    "duplicate-entry",
    "unlisted-file",  # a file in the tar that the manifest does not list
    "missing-file",  # a file the manifest lists that the tar does not hold
    "out-of-order",  # entries not in the canonical order
    "size-limit",  # declared sizes over the verifier's limits, or a size that disagrees with the manifest
    "hash-mismatch",
    "missing-manifest",
    "missing-signature",
    "bad-signature",
    "untrusted-key",
    "revoked-key",
    "bad-manifest",  # not JSON, duplicate keys, a field of the wrong type, unknown fields
    "unsupported-format",
    "expired",
    "not-yet-valid",
    "replayed-counter",  # counter not above the installed one: a replay or a rollback
    "wrong-profile",
    "external-data",  # ONNX external data pointing outside the package
    "io-error",  # cannot read the package or write the unpacked files (disk full, permissions)
    "destination-exists",
)


class PackageError(Exception):
    """A package was refused; ``reason`` is one of :data:`REASONS`."""

    exit_code = 4

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"PackageError[{self.reason}]: {text}"
