"""Ingest devices' ``state``, ``telemetry`` and ``events`` into the fleet store, in batches.

paho's network thread only parses and enqueues; one writer thread drains the queue into one transaction
per batch (up to ``batch`` messages or ``interval`` seconds). When the store falls behind, the bounded queue
fills and ``accept`` waits, which stops paho reading the socket: the broker holds the QoS1 messages
instead of us dropping them (backpressure rather than loss).

Poison never blocks the stream. Every message is checked against the schema where it enters
(:func:`edgekit.fleet.store.check`: types, 64-bit integers, finite floats, bounded strings); one that fails
is counted, logged and kept in the store's ``quarantine`` table with the reason, once per distinct payload
(a retained poison state delivered again on every subscribe is not re-added). When a batch still fails to
store, the writer asks whether the store answers at all: if it does not, the batch is kept and retried
(a database outage loses nothing); if it does, the batch is written one message at a time and the ones the
store refuses are quarantined, so the rest of the batch and every later message get through. The writer
thread is supervised: an unexpected exception is logged, counted and the loop started again.
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

from edgekit_agent.protocol import ProtocolError, dumps, loads, parse_topic, topic

from edgekit.errors import first_line
from edgekit.fleet.store import Message, Store, digest, message

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
    quarantined: int = 0
    writer_restarts: int = 0
    last_error: str = ""

    def to_json(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Refused:
    """A message refused at the boundary, on its way to the quarantine table."""

    topic: str
    payload: bytes
    reason: str
    received: float


def _refusal(m: Message, exc: Exception) -> _Refused:
    reason = f"the store refused it: {type(exc).__name__}: {first_line(exc, 200)}"
    try:
        payload = dumps(m.body)
    except ValueError:
        payload = repr(m.body)[:2048].encode()
    return _Refused(topic(m.fleet, m.device, m.kind), payload, reason, m.received)


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
        """Check one message (the transport's thread). Waits when the writer is behind: see the module docstring."""
        self.stats.received += 1
        now = time.time()
        try:
            fleet, device, kind = parse_topic(topic)
            if kind not in INGESTED:
                raise ProtocolError(f"{kind} is not ingested")
            if kind == "state" and not payload:
                done()
                return  # a cleared retained state
            checked = message(fleet, device, kind, loads(payload, max_bytes=256 * 1024), digest(topic, payload), now)
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.warning("quarantined a message on %s: %s", topic[:200], exc)
            self._idle.clear()
            self._queue.put((_Refused(topic, payload, str(exc), now), done))  # redelivery would not make it valid
            return
        self._idle.clear()
        self._queue.put((checked, done))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="edgekit-ingest")
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False once the writer thread has died for good (``/metrics`` and ``fleet status`` say so)."""
        t = self._thread  # ident is None between Thread() and start(): not started yet is not dead
        return t is None or t.ident is None or t.is_alive() or self._stop.is_set()

    def _supervise(self) -> None:
        while True:
            try:
                self._run()
                return
            except Exception as exc:  # a bug must not silently end ingest for the whole fleet
                self.stats.writer_restarts += 1
                self.stats.last_error = f"writer: {type(exc).__name__}: {str(exc)[:160]}"
                log.exception("the ingest writer failed; restarting it")
                if self._stop.wait(0.5):
                    return

    def _drain(self) -> list[tuple[Message | _Refused, Callable[[], None]]]:
        """Whatever is queued, up to ``batch``, without waiting for more: messages are acknowledged to the
        broker only after their commit, and the broker sends only so many unacknowledged ones (Mosquitto's
        ``max_inflight_messages``), so waiting for a fuller batch would stall the stream. Under load the
        queue refills during each commit and batches grow by themselves."""
        items: list[tuple[Message | _Refused, Callable[[], None]]] = []
        with contextlib.suppress(queue.Empty):
            items.append(self._queue.get(timeout=self.interval))
            while len(items) < self.batch:
                items.append(self._queue.get_nowait())
        return items

    def _run(self) -> None:
        pending: list[tuple[Message | _Refused, Callable[[], None]]] = []
        while not (self._stop.is_set() and self._queue.empty() and not pending):
            if not pending:
                pending = self._drain()
                if not pending:
                    self._idle.set()
                    continue
            if not self._write([m for m, _ in pending]):
                if self._stop.wait(1.0):
                    return  # stopping with the store down: unacknowledged, so the broker redelivers them
                continue
            for _, done in pending:
                done()
            pending = []

    def _write(self, items: list[Message | _Refused]) -> bool:
        """Store a batch; False when the store is unreachable (keep it and retry), True when it was handled."""
        good = [m for m in items if isinstance(m, Message)]
        refused = [r for r in items if isinstance(r, _Refused)]
        try:
            self._commit(good, refused)
            return True
        except Exception as exc:
            self._note_error(exc)
            if not self.store.ping():
                return False
        # the store answers, so something in this batch is what it refuses: find it, keep the rest
        for item in good:
            try:
                self._commit([item], [])
            except Exception as exc:
                if not self.store.ping():
                    return False
                refused.append(_refusal(item, exc))
        try:
            self._commit([], refused)
        except Exception as exc:
            self._note_error(exc)
            return self.store.ping()  # a quarantine row the store refuses is dropped, never retried forever
        return True

    def _commit(self, good: list[Message], refused: list[_Refused]) -> None:
        if good:
            new = self.store.ingest(good)
            self.stats.batches += 1
            self.stats.stored += new
            self.stats.duplicates += len(good) - new
        if refused:
            self.store.quarantine([(r.topic, r.payload, r.reason, r.received) for r in refused])
            self.stats.quarantined += len(refused)

    def _note_error(self, exc: Exception) -> None:
        self.stats.store_errors += 1
        self.stats.last_error = first_line(exc, 200)
        log.warning("store write failed (%s)", self.stats.last_error)

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
