"""The agent's data directory: verified versions, the ``current`` symlink, persisted updater state.

    DATA/state.json            the updater's state, replaced atomically (write, fsync, rename, fsync dir)
    DATA/versions/NAME-COUNTER-SHA12/   one verified, unpacked package each
    DATA/current -> versions/...        switched with rename(2) over the old link, then the dir is fsync'd
    DATA/downloads/SHA.part + SHA.have  a download in progress and the chunks it holds
    DATA/outbox/                        telemetry and events waiting for the broker

Everything that must survive kill -9 or power loss is written to a temporary name, fsync'd and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

DEFAULT_STATE: dict[str, Any] = {"state": "idle", "installed": None, "installed_counter": 0}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.downloads = self.root / "downloads"
        self.outbox = self.root / "outbox"
        for d in (self.versions, self.downloads, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "state.json"
        self.current_link = self.root / "current"
        # a kill between atomic_write's write and its rename leaves the temporary file behind; one agent
        # owns a data dir, so any such file is from a dead process (the soak test found them)
        for stale in self.root.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)

    def read_state(self) -> dict[str, Any]:
        try:
            return {**DEFAULT_STATE, **json.loads(self.state_path.read_text())}
        except FileNotFoundError:
            return dict(DEFAULT_STATE)
        except (OSError, ValueError):
            # A state file that cannot be read is treated as "nothing in progress": the current link, which
            # is only ever switched atomically, still says what runs.
            return dict(DEFAULT_STATE)

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(state, sort_keys=True, indent=1).encode())

    def current(self) -> Path | None:
        if not self.current_link.is_symlink():
            return None
        target = self.current_link.resolve()
        return target if target.is_dir() else None

    def version_dir(self, name: str, counter: int, sha256: str) -> Path:
        return self.versions / f"{name}-{counter}-{sha256[:12]}"

    def switch(self, version: Path) -> None:
        """Point ``current`` at ``version`` atomically: a reader sees the old or the new link, never neither."""
        tmp = self.root / f".current.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(version, self.root), tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)

    def remove_version(self, version: Path) -> None:
        if version != self.current() and version.parent == self.versions:
            shutil.rmtree(version, ignore_errors=True)

    def clean(self, keep: set[Path]) -> None:
        """Remove half-unpacked directories and versions other than ``keep`` (current + previous)."""
        for path in self.versions.iterdir():
            if path.name.startswith(".") or path.resolve() not in {k.resolve() for k in keep}:
                shutil.rmtree(path, ignore_errors=True)

    def part(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.part"

    def drop_download(self, sha256: str) -> None:
        for suffix in (".part", ".have"):
            (self.downloads / f"{sha256}{suffix}").unlink(missing_ok=True)
