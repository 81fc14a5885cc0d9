"""``edgekit serve``: answer devices' chunk requests from a folder of .edgepkg files, ingest what they report.

Packages are indexed by the sha256 of their bytes (what ``desired`` names); an unknown hash triggers one
re-scan, so packages dropped into the folder are served without a restart. Chunks are read with
``os.pread`` from open files: no file is read whole. How requests and reports arrive is the transport's
business (``edgekit.fleet.transports``: MQTT or NATS); this module owns the package index, the heartbeat
and the reconciler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.cli import SWITCH_INTERVAL_S
from edgekit_agent.protocol import ChunkRequest, ChunkResponse, ProtocolError, _segment

from edgekit.errors import EdgekitError

log = logging.getLogger("edgekit.serve")


class PackagesNotFound(EdgekitError):
    pass


class ServeInvalid(EdgekitError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class PackageServer:
    packages: Path
    broker: str
    workers: int = 2
    ingest: Any = None  # an edgekit.fleet.ingest.Ingest, or None to only serve chunks
    session: str | None = None  # a persistent session: what devices report while serve is down is kept
    share: str | None = None  # a shared-subscription group: several serve workers split the messages
    nats: str | None = None  # NATS URL(s): take requests and reports from a NATS queue group instead of MQTT
    reconcile_grace: float = 0.0  # > 0 (with ingest): resend desired to devices divergent this long
    served: int = 0
    refused: int = 0
    failures: int = 0  # unexpected errors while answering (each logged); the workers carry on
    _index: dict[str, Path] = field(default_factory=dict)
    _fds: dict[str, tuple[int, int]] = field(default_factory=dict)  # sha256 -> (fd, size); packages never change
    reconciler: Any = None  # an edgekit.fleet.reconcile.Reconciler while serve runs one (reconcile_grace > 0)
    transport: Any = None  # an edgekit.fleet.transports MqttTransport or NatsTransport once started
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Packages are immutable and a fleet asks for the same chunks many times: hash each chunk once.
    _chunk_hashes: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.packages.is_dir():
            raise PackagesNotFound(f"--packages {self.packages} is not a directory; point it at your .edgepkg files")
        if self.nats and self.session:
            raise ServeInvalid("--session is for MQTT brokers; with --nats the JetStream consumer keeps reports")
        if self.reconcile_grace < 0:
            raise ServeInvalid(f"--reconcile-grace {self.reconcile_grace:g} must be >= 0 seconds (0 turns it off)")
        if self.share is not None:
            try:
                _segment(self.share, "--share group")
            except ProtocolError as exc:
                raise ServeInvalid(str(exc)) from None
        self.rescan()

    def rescan(self) -> dict[str, Path]:
        with self._lock:
            known = {p: s for s, p in self._index.items()}
            for path in sorted(self.packages.glob("*.edgepkg")):
                if path not in known:
                    self._index[sha256_file(path)] = path
            return dict(self._index)

    def _fd(self, sha: str) -> tuple[int, int] | None:
        """The open file of package ``sha`` and its size, or None when the repository has no such package."""
        if sha not in self._index:
            self.rescan()
        path = self._index.get(sha)
        if path is None:
            return None
        with self._lock:
            if sha not in self._fds:
                fd = os.open(path, os.O_RDONLY)
                self._fds[sha] = (fd, os.fstat(fd).st_size)
            return self._fds[sha]

    def answer(self, request: ChunkRequest) -> ChunkResponse | None:
        """The response to one request (None: send nothing, the device will time out and ask again)."""
        return self._read(request)

    def _read(self, request: ChunkRequest) -> ChunkResponse:
        opened = self._fd(request.sha256)
        if opened is None:
            self.refused += 1
            return ChunkResponse(request.request_id, request.sha256, request.offset, b"", "",
                                 error=f"no package with sha256 {request.sha256[:12]}… in the repository")  # fmt: skip
        fd, size = opened
        if request.offset >= size:
            self.refused += 1
            error = f"offset {request.offset} is past the end of the package ({size} bytes)"
            return ChunkResponse(request.request_id, request.sha256, request.offset, b"", "", error=error)
        data = os.pread(fd, min(request.length, size - request.offset), request.offset)
        self.served += 1
        key = (request.sha256, request.offset, len(data))
        digest = self._chunk_hashes.get(key)
        if digest is None:
            digest = self._chunk_hashes[key] = hashlib.sha256(data).hexdigest()
        return ChunkResponse(request.request_id, request.sha256, request.offset, data, digest)

    def start(self) -> None:
        # paho's thread hands every message to a worker: at CPython's default 5 ms switch interval each
        # hand-off can wait that long (process-wide; the agent's CLI sets the same on the device)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if self.ingest is not None:
            self.ingest.start()
            if self.reconcile_grace > 0:
                from edgekit.fleet.reconcile import Reconciler, mqtt_publisher

                self.reconciler = Reconciler(self.ingest.store.url, mqtt_publisher(self.broker),
                                             grace=self.reconcile_grace)  # fmt: skip
                self.reconciler.start()
            threading.Thread(target=self._heartbeat, daemon=True, name="edgekit-heartbeat").start()
        if self.nats:
            from edgekit.fleet.transports.nats import NatsTransport

            self.transport = NatsTransport(self, self.nats, group=self.share or "edgekit-serve")
        else:
            from edgekit.fleet.transports.mqtt import MqttTransport

            self.transport = MqttTransport(self, self.broker, workers=self.workers, session=self.session,
                                           share=self.share)  # fmt: skip
        self.transport.start()

    HEARTBEAT = 5.0  # seconds; fleet status takes a worker silent for 3 beats as gone

    def _heartbeat(self) -> None:
        """Tell the store, every few seconds, whether this worker's threads are alive and what failed."""
        from edgekit.fleet.store import Store

        holder, started, store = f"serve-{uuid.uuid4().hex[:10]}@{socket.gethostname()}", time.time(), None
        while True:
            try:
                store = store or Store(self.ingest.store.url, migrate=False)
                stats = self.ingest.stats
                detail = (
                    f"chunks served {self.served}, refused {self.refused}, failures {self.failures}; ingest stored "
                    f"{stats.stored}, quarantined {stats.quarantined}, writer restarts {stats.writer_restarts}"
                    + (f"; last error: {stats.last_error}" if stats.last_error else "")
                )
                store.heartbeat(holder, started, self.healthy and not self._stop.is_set(), detail)
            except Exception as exc:  # the store is away: the missing heartbeat says so
                log.debug("heartbeat failed: %s", exc)
                store = None
            if self._stop.wait(self.HEARTBEAT):
                return

    @property
    def healthy(self) -> bool:
        """False when a thread serve depends on has died (the ingest writer, the reconciler; chunk workers
        never die)."""
        return (self.ingest is None or self.ingest.healthy) and (self.reconciler is None or self.reconciler.healthy)

    def stop(self) -> None:
        self._stop.set()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.transport is not None:
            self.transport.stop()
        if self.ingest is not None:
            self.ingest.stop()
        for fd, _size in self._fds.values():
            os.close(fd)
