"""Store-and-forward: telemetry and events queue on disk while the broker is away, and leave in order.

One file per message (``SEQ.msg``: topic line, then the payload), written atomically. Bounded: past
``limit`` messages the oldest are dropped and counted, so a device offline for a week cannot fill its disk.
When the disk itself is full, messages wait in memory instead (at most ``MEMORY_LIMIT``, oldest dropped
and counted), and keep going there until those are sent, so the order never changes: the event saying
the disk is full must still reach the fleet.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

MEMORY_LIMIT = 1000


class Outbox:
    def __init__(self, directory: Path, *, limit: int = 10_000) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.dropped = 0
        self.disk_errors = 0
        self._memory: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        names = sorted(p.name for p in self.dir.glob("*.msg"))
        self._next = int(names[-1].split(".")[0]) + 1 if names else 0
        self._count = len(names)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def put(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if not self._memory and self._write(topic, payload):
                self._ready.notify_all()
                return
            self._memory.append((topic, payload))
            if len(self._memory) > MEMORY_LIMIT:
                self._memory.popleft()
                self.dropped += 1
            self._ready.notify_all()

    def _write(self, topic: str, payload: bytes) -> bool:
        """Write one message file; False when the disk refuses it (full, read-only)."""
        seq = self._next
        tmp = self.dir / f".{seq:016d}.tmp"
        try:
            tmp.write_bytes(topic.encode() + b"\n" + payload)
            os.replace(tmp, self.dir / f"{seq:016d}.msg")
        except OSError:
            self.disk_errors += 1
            tmp.unlink(missing_ok=True)
            return False
        self._next += 1
        self._count += 1
        while self._count > self.limit:
            oldest = min(self.dir.glob("*.msg"))
            oldest.unlink(missing_ok=True)
            self._count -= 1
            self.dropped += 1
        return True

    def peek(self, timeout: float) -> tuple[Path | None, str, bytes] | None:
        """The oldest message, waiting up to ``timeout`` seconds for one (path None: held in memory)."""
        with self._ready:
            if len(self) == 0:
                self._ready.wait(timeout)
            files = sorted(self.dir.glob("*.msg"))
            if not files and self._memory:
                topic, payload = self._memory[0]
                return None, topic, payload
        if not files:
            return None
        try:
            data = files[0].read_bytes()
        except FileNotFoundError:  # dropped as the oldest meanwhile
            return None
        topic, _, payload = data.partition(b"\n")
        return files[0], topic.decode(), payload

    def done(self, path: Path | None) -> None:
        with self._lock:
            if path is None:
                if self._memory:
                    self._memory.popleft()
            elif path.exists():
                path.unlink()
                self._count -= 1

    def __len__(self) -> int:
        return self._count + len(self._memory)
