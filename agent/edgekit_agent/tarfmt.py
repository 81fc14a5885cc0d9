"""The canonical tar that carries an .edgepkg: a strict subset of POSIX ustar with exactly one encoding.

Why not ``tarfile``: a package must be byte-for-byte a function of its contents. ``tarfile`` reads headers
leniently (bytes after a NUL, the checksum's trailing byte, block padding and the end-of-archive record are
ignored), so a flipped byte there would still be accepted; and its writer stamps mtimes and owners. Here
every header is compared with the one header the writer would produce for that (name, size), padding and the
end blocks must be zero and the file must end right after them. The result: any change to any byte of a
package is refused (the hypothesis test in tests/agent/test_verify_fuzz.py checks exactly that), and the
format fits in a page of docs/package-format.md. Standard ``tar tf`` still lists it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from edgekit_agent.errors import PackageError

BLOCK = 512
MAX_NAME = 100
MAX_SIZE = 8**11 - 1  # 11 octal digits
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TYPE_NAMES = {
    b"1": "a hardlink",
    b"2": "a symlink",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a fifo",
    b"7": "a contiguous file",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long-name entry",
    b"K": "a GNU long-link entry",
    b"S": "a GNU sparse file",
}


def check_name(name: str) -> str:
    """Refuse names that could escape or surprise: absolute, ``..``, hidden, odd characters, too long."""
    if name.startswith("/") or "\\" in name or any(part in {"..", "."} for part in name.split("/")):
        raise PackageError("unsafe-path", f"entry {name!r} escapes the package (absolute path or '..')")
    if not NAME_RE.fullmatch(name) or len(name.encode()) > MAX_NAME:
        raise PackageError(
            "unsafe-path",
            f"entry name {name!r} is not allowed (letters, digits, '._-' and '/' only, no leading dot, "
            f"at most {MAX_NAME} bytes)",
        )
    return name


def header(name: str, size: int) -> bytes:
    """The one ustar header edgekit writes for a regular file (mode 0644, uid/gid 0, mtime 0, no owner names)."""
    raw = name.encode()
    if len(raw) > MAX_NAME or not 0 <= size <= MAX_SIZE:
        raise ValueError(f"cannot encode {name!r} of {size} bytes in a ustar header")
    fields = [
        raw.ljust(100, b"\0"),  # name
        b"0000644\0",  # mode
        b"0000000\0",  # uid
        b"0000000\0",  # gid
        b"%011o\0" % size,  # size
        b"00000000000\0",  # mtime
        b" " * 8,  # checksum placeholder
        b"0",  # typeflag: regular file
        b"\0" * 100,  # linkname
        b"ustar\x0000",  # magic + version
        b"\0" * 32,  # uname
        b"\0" * 32,  # gname
        b"0000000\0",  # devmajor
        b"0000000\0",  # devminor
        b"\0" * 155,  # prefix
        b"\0" * 12,  # pad
    ]
    block = bytearray(b"".join(fields))
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def write(stream: BinaryIO, entries: list[tuple[str, bytes]]) -> None:
    """Write ``entries`` in the given order, then the two zero end blocks and nothing else."""
    for name, data in entries:
        stream.write(header(check_name(name), len(data)))
        stream.write(data)
        stream.write(b"\0" * (-len(data) % BLOCK))
    stream.write(b"\0" * (2 * BLOCK))


def _sniff(first: bytes) -> None:
    if not first:
        raise PackageError("not-a-package", "the file is empty; an .edgepkg is a signed tar written by edgekit package")
    if first.startswith(b"PK\x03\x04") or first.startswith(b"PK\x05\x06"):
        raise PackageError("not-a-package", "this is a zip archive, not an .edgepkg; build one with edgekit package")
    if first.startswith(b"\x1f\x8b"):
        raise PackageError(
            "not-a-package", "this is gzip data; an .edgepkg is an uncompressed tar (do not compress it in transit)"
        )


class Reader:
    """Reads a package stream once, front to back, in large chunks; yields entries as (name, size)."""

    def __init__(self, stream: BinaryIO, *, chunk: int = 1 << 20) -> None:
        self._stream = stream
        self._chunk = chunk
        self._buf = bytearray()
        self._pos = 0
        self.bytes_read = 0
        self._first = True

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._pos < n:
            try:
                data = self._stream.read(max(self._chunk, n))
            except OSError as exc:
                raise PackageError("io-error", f"cannot read the package: {exc.strerror or exc}") from None
            if not data:
                return False
            self.bytes_read += len(data)
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data
        return True

    def _take(self, n: int, what: str) -> bytes:
        if not self._fill(n):
            raise PackageError("truncated", f"the package ends inside {what}; download it again")
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def entries(self) -> Iterator[tuple[str, int]]:
        """Yield each entry's name and size; the caller must consume its data with :meth:`read_data`."""
        while True:
            if self._first:
                self._fill(BLOCK)
                _sniff(bytes(self._buf[:8]))
                self._first = False
            block = self._take(BLOCK, "a tar header")
            if block == b"\0" * BLOCK:
                if self._take(BLOCK, "the end-of-archive blocks") != b"\0" * BLOCK:
                    raise PackageError("bad-entry", "a zero block is not followed by a second one; the file is damaged")
                if self._fill(1):
                    raise PackageError("bad-entry", "bytes follow the end of the archive; the file is damaged")
                return
            yield self._parse(block)

    def _parse(self, block: bytes) -> tuple[str, int]:
        if block[257:265] != b"ustar\x0000":
            raise PackageError("not-a-package", "not an .edgepkg (no ustar header); build one with edgekit package")
        raw_name = block[:100].split(b"\0", 1)[0]
        name = raw_name.decode("utf-8", "replace")
        kind = block[156:157]
        if kind not in (b"0", b"\0"):
            what = _TYPE_NAMES.get(kind, f"an entry of type {kind!r}")
            raise PackageError("link-entry", f"entry {name!r} is {what}; packages hold regular files only")
        check_name(name)
        try:
            size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise PackageError("bad-entry", f"entry {name!r} has an unreadable size field") from None
        if block != header(name, size):
            raise PackageError(
                "bad-entry",
                f"header of {name!r} is not the canonical edgepkg header (modified or not built by edgekit)",
            )
        return name, size

    def read_data(self, size: int, name: str) -> Iterator[bytes]:
        """Yield the entry's bytes in chunks, then check its zero padding."""
        left = size
        while left:
            if not self._fill(1):
                raise PackageError("truncated", f"the package ends inside {name!r}; download it again")
            n = min(left, len(self._buf) - self._pos)
            yield bytes(self._buf[self._pos : self._pos + n])
            self._pos += n
            left -= n
        pad = -size % BLOCK
        if pad and self._take(pad, f"the padding of {name!r}") != b"\0" * pad:
            raise PackageError("bad-entry", f"the padding after {name!r} is not zero; the file is damaged")
