"""Data goes to stdout, everything for humans (progress, tables, errors) to stderr."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

err = Console(stderr=True)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Route fd 1 to stderr while libraries run: NNCF, OpenVINO and ORT print progress to stdout, and
    ``--format json`` promises stdout holds exactly one JSON object."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send fds 1 and 2 (what C++ and Python print) into ``path`` while a library runs: torch's exporter
    prints the whole IR graph of a model it cannot export, hundreds of lines before the one that matters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "wb") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def finite(value: Any) -> Any:
    """``value`` with non-finite floats as None, at any depth: JSON has no Infinity or NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def print_json(data: object) -> None:
    """Standard JSON only (a store written before values were checked may hold an infinity)."""
    import json

    sys.stdout.write(json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()
