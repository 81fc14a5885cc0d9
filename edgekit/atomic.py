"""Write a file so that readers see the old bytes or the new ones, never a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edgekit.errors import OutputNotWritable


@contextlib.contextmanager
def atomic_file(out: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file in ``out``'s directory; on success it is fsynced and renamed over ``out``.

    On any error the temporary file is removed and ``out`` is untouched; OS errors become one-line
    ``OutputNotWritable`` (full disk, read-only folder, permissions).
    """
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise OutputNotWritable(f"cannot write {out} ({exc.strerror}); free space or choose another path") from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
