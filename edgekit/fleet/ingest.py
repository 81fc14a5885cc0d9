"""Ingest devices' ``state``, ``telemetry`` and ``events`` into the fleet store, in batches.

paho's network thread only parses and enqueues; one writer thread drains the queue into one transaction
per batch (up to ``batch`` messages or ``interval`` seconds). When the store falls behind, the bounded queue
fills and ``accept`` waits, which stops paho reading the socket: the broker holds the QoS1 messages
instead of us dropping them (backpressure rather than loss). A malformed message is counted and logged,
never fatal; a store error keeps the batch and retries, so a brief database outage loses nothing.
A message may carry a ``done`` callback, called once its batch is committed (or it is found malformed):
that is where a transport acknowledges it to a broker that redelivers what was never acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgekit_agent.protocol import ProtocolError, loads, parse_topic

from edgekit.fleet.store import Message, Store, digest

log = logging.getLogger("edgekit.ingest")
INGESTED = ("state", "telemetry", "events")


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    batches: int = 0
    store_errors: int = 0
    last_error: str = ""

    def to_json(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass
class Ingest:
    store: Store
    batch: int = 2000
    interval: float = 0.05
    stats: IngestStats = field(default_factory=IngestStats)
    _queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=50_000))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _idle: threading.Event = field(default_factory=threading.Event)

    def accept(self, topic: str, payload: bytes, done: Callable[[], None] = lambda: None) -> None:
        """Parse one message (paho's thread). Waits when the writer is behind: see the module docstring."""
        self.stats.received += 1
        try:
            fleet, device, kind = parse_topic(topic)
            if kind not in INGESTED:
                raise ProtocolError(f"{kind} is not ingested")
            if kind == "state" and not payload:
                done()
                return  # a cleared retained state
            body = loads(payload, max_bytes=256 * 1024)
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.warning("ignored a malformed message on %s: %s", topic[:200], exc)
            done()  # redelivering it would not make it valid
            return
        self._idle.clear()
        self._queue.put((Message(fleet, device, kind, body, digest(topic, payload), time.time()), done))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgekit-ingest")
        self._thread.start()

    def _drain(self) -> list[tuple[Message, Callable[[], None]]]:
        """Whatever is queued, up to ``batch``, without waiting for more: messages are acknowledged to the
        broker only after their commit, and the broker sends only so many unacknowledged ones (Mosquitto's
        ``max_inflight_messages``), so waiting for a fuller batch would stall the stream. Under load the
        queue refills during each commit and batches grow by themselves."""
        items: list[tuple[Message, Callable[[], None]]] = []
        with contextlib.suppress(queue.Empty):
            items.append(self._queue.get(timeout=self.interval))
            while len(items) < self.batch:
                items.append(self._queue.get_nowait())
        return items

    def _run(self) -> None:
        pending: list[tuple[Message, Callable[[], None]]] = []
        while not (self._stop.is_set() and self._queue.empty() and not pending):
            if not pending:
                pending = self._drain()
                if not pending:
                    self._idle.set()
                    continue
            try:
                new = self.store.ingest([m for m, _ in pending])
            except Exception as exc:  # the database went away: keep the batch, retry
                self.stats.store_errors += 1
                self.stats.last_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                log.warning("store write failed (%s); retrying", self.stats.last_error)
                time.sleep(1.0)
                continue
            self.stats.batches += 1
            self.stats.stored += new
            self.stats.duplicates += len(pending) - new
            for _, done in pending:
                done()
            pending = []

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted so far is in the store."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.empty() and self._idle.wait(0.05) and self._queue.empty():
                return True
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
