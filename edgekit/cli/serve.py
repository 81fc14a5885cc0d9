"""``edgekit serve --packages DIR --broker URL``: the package repository devices download from."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli._console import err


def serve(
    packages: Annotated[Path, typer.Option(help="folder of .edgepkg files (indexed by sha256)")],
    broker: Annotated[str, typer.Option(help="mqtt://HOST:PORT")] = "mqtt://127.0.0.1:1883",
) -> None:
    """Answer devices' chunk requests until Ctrl-C."""
    from edgekit.fleet.serve import PackageServer

    server = PackageServer(packages, broker)
    index = server.rescan()
    server.start()
    err.print(f"serving {len(index)} package(s) from {packages} on {broker}", highlight=False)
    for sha, path in sorted(index.items(), key=lambda kv: kv[1].name):
        err.print(f"  {path.name}  size {path.stat().st_size:,}  sha256 {sha}", highlight=False)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    err.print(f"served {server.served} chunk(s), refused {server.refused}", highlight=False)
