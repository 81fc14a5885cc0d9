"""Store-and-forward: telemetry and events queue on disk while the broker is away, and leave in order.

One file per message (``SEQ.msg``: topic line, then the payload), written atomically. Bounded: past
``limit`` messages the oldest are dropped and counted, so a device offline for a week cannot fill its disk.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Outbox:
    def __init__(self, directory: Path, *, limit: int = 10_000) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.dropped = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        names = sorted(p.name for p in self.dir.glob("*.msg"))
        self._next = int(names[-1].split(".")[0]) + 1 if names else 0
        self._count = len(names)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def put(self, topic: str, payload: bytes) -> None:
        with self._lock:
            seq = self._next
            self._next += 1
            tmp = self.dir / f".{seq:016d}.tmp"
            tmp.write_bytes(topic.encode() + b"\n" + payload)
            os.replace(tmp, self.dir / f"{seq:016d}.msg")
            self._count += 1
            while self._count > self.limit:
                oldest = min(self.dir.glob("*.msg"))
                oldest.unlink(missing_ok=True)
                self._count -= 1
                self.dropped += 1
            self._ready.notify_all()

    def peek(self, timeout: float) -> tuple[Path, str, bytes] | None:
        """The oldest message, waiting up to ``timeout`` seconds for one."""
        with self._ready:
            if self._count == 0:
                self._ready.wait(timeout)
            files = sorted(self.dir.glob("*.msg"))
        if not files:
            return None
        try:
            data = files[0].read_bytes()
        except FileNotFoundError:  # dropped as the oldest meanwhile
            return None
        topic, _, payload = data.partition(b"\n")
        return files[0], topic.decode(), payload

    def done(self, path: Path) -> None:
        with self._lock:
            if path.exists():
                path.unlink()
                self._count -= 1

    def __len__(self) -> int:
        return self._count
