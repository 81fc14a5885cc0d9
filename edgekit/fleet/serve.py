"""``edgekit serve``: answer devices' chunk requests from a folder of .edgepkg files, ingest what they report.

Packages are indexed by the sha256 of their bytes (what ``desired`` names); an unknown hash triggers one
re-scan, so packages dropped into the folder are served without a restart. Requests are parsed in paho's
thread and served by a worker pool reading with ``os.pread`` from open files: no file is read whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgekit_agent.protocol import ChunkRequest, ChunkResponse, ProtocolError, parse_topic, topic

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt

log = logging.getLogger("edgekit.serve")


class PackagesNotFound(EdgekitError):
    pass


class ClusterNotReady(EdgekitError):
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
    _queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1024))
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Packages are immutable and a fleet asks for the same chunks many times: hash each chunk once.
    _chunk_hashes: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.packages.is_dir():
            raise PackagesNotFound(f"--packages {self.packages} is not a directory; point it at your .edgepkg files")
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

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        """Reports are acknowledged to the broker only once stored (a serve killed with a batch in hand lost
        it when paho acknowledged on receipt); chunk requests at once: a lost one is asked for again."""
        if self.ingest is not None and not msg.topic.endswith("/chunk/request"):
            mid, qos = msg.mid, msg.qos
            self.ingest.accept(msg.topic, msg.payload, lambda: self.client.ack(mid, qos))
            return
        self.client.ack(msg.mid, msg.qos)
        try:
            fleet, device, _ = parse_topic(msg.topic)
            self._queue.put_nowait((fleet, device, ChunkRequest.from_json(msg.payload)))
        except (ProtocolError, queue.Full):
            self.refused += 1  # a malformed or excess request: the device times out and asks again

    def _work(self) -> None:
        """One chunk worker. A request that fails in an unexpected way is logged and counted, and the worker
        goes on: an exception here once ended the thread, and no device got a chunk again while serve looked
        healthy."""
        while not self._stop.is_set():
            try:
                fleet, device, request = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                response = self.answer(request)
                if response is not None:
                    self.client.publish(topic(fleet, device, "chunk/response"), response.to_bytes(), qos=0)
            except Exception:
                self.failures += 1
                log.exception("answering a chunk request of %s/%s failed", fleet, device)

    def start(self) -> None:
        if self.ingest is not None:
            self.ingest.start()
            threading.Thread(target=self._heartbeat, daemon=True, name="edgekit-heartbeat").start()
            if self.reconcile_grace > 0:
                from edgekit.fleet.reconcile import Reconciler, mqtt_publisher

                self.reconciler = Reconciler(self.ingest.store.url, mqtt_publisher(self.broker),
                                             grace=self.reconcile_grace)  # fmt: skip
                self.reconciler.start()
        if self.nats:
            self._nats = NatsTransport(self, self.nats, group=self.share or "edgekit-serve")
            self._nats.start()
            return
        self.client = mqtt.client("serve", self.session, manual_ack=True)
        self.client.on_message = self._on_message
        kinds = ["chunk/request"] + (["state", "telemetry", "events"] if self.ingest is not None else [])
        prefix = f"$share/{self.share}/" if self.share else ""
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{prefix}edgekit/v1/+/+/{k}", 1) for k in kinds])
        mqtt.connect(self.client, self.broker)
        for _ in range(self.workers):
            threading.Thread(target=self._work, daemon=True, name="edgekit-serve").start()

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
        if self.nats:
            self._nats.stop()
        else:
            self.client.disconnect()
            self.client.loop_stop()
        if self.ingest is not None:
            self.ingest.stop()
        for fd, _size in self._fds.values():
            os.close(fd)


def subject_of(topic_name: str) -> str:
    """The NATS subject an MQTT topic arrives on (NATS 2.9 refuses topics with '.', so this is exact)."""
    return topic_name.replace("/", ".")


def topic_of(subject: str) -> str:
    """The MQTT topic a NATS subject came from: the inverse of :func:`subject_of`."""
    return subject.replace(".", "/")


class NatsTransport:
    """``edgekit serve --nats``: the same server on a NATS cluster's native port.

    Devices still speak MQTT to the cluster; their topics arrive as subjects (``edgekit/v1/f/d/telemetry`` ⇄
    ``edgekit.v1.f.d.telemetry``). Two paths, because the two kinds of message need different guarantees:

    - chunk requests (QoS 0; a lost one is asked for again) come through a core NATS queue group: every
      worker subscribes with the same group and NATS hands each request to one of them, at the lowest latency;
    - reports (state, telemetry, events, sent at QoS 1) come from a durable JetStream consumer on the stream
      in which the cluster's MQTT gateway stores every QoS 1 publish *before* it acknowledges it to the device
      (``$MQTT_msgs``). All workers pull from the one consumer, so each message goes to one worker, and a
      message is acknowledged only once its batch is committed to the store: a worker or node that dies
      with messages in hand has them redelivered to another worker after ``ack_wait``, and the store's
      digest keeps a redelivered message from being counted twice. A core queue subscription would be
      at-most-once: what is in flight to a worker whose node dies is gone, although the device got its PUBACK.

    nats-py's own reconnect moves a worker to a surviving node.
    """

    MQTT_STREAM = "$MQTT_msgs"  # nats-server's MQTT gateway: one stream of every QoS 1 message (2.9 and later)
    MQTT_PREFIX = "$MQTT.msgs."
    REPORTS = ("state", "telemetry", "events")
    BATCH = 512
    ACK_WAIT = 30.0
    # while no worker pulls, the consumer keeps reports in the cluster; after this long it is removed, so a
    # serve group that is gone for good does not make the cluster keep every QoS 1 message forever
    KEEP_WHILE_DOWN = 24 * 3600.0

    def __init__(self, server: PackageServer, urls: str, *, group: str) -> None:
        self.server, self.group = server, group
        self.urls = [u.strip() for u in urls.split(",") if u.strip()]
        for url in self.urls or [""]:
            parsed = urlparse(url)
            if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
                raise mqtt.BrokerUnreachable(f"--nats {url!r} must look like nats://HOST:PORT (several: with commas)")
        self._loop: Any = None
        self._ready = threading.Event()
        self._failed: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgekit-serve-nats")

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failed:
            reason = self._failed[0] if self._failed else f"no answer within {timeout:.0f} s"
            raise mqtt.BrokerUnreachable(f"cannot use NATS at {', '.join(self.urls)}: {reason}")

    def _run(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        import asyncio

        import nats

        self._done = asyncio.Event()

        async def quiet(exc: Exception) -> None:  # nats-py prints a traceback per failed reconnect otherwise
            log.debug("nats: %s", exc)

        try:
            # the first URL first, as with --broker lists; the others (and what the cluster announces) on failure
            nc = await asyncio.wait_for(
                nats.connect(servers=self.urls, name=f"edgekit-serve-{self.group}", connect_timeout=5,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.5, dont_randomize=True,
                             error_cb=quiet),
                timeout=10,
            )  # fmt: skip
        except TimeoutError:  # nats-py keeps trying every server until then
            self._failed.append("no server answered within 10 s; start the cluster or fix --nats")
            self._ready.set()
            return
        except Exception as exc:  # nats-py raises several types for a refused or malformed connection
            self._failed.append(f"{str(exc) or type(exc).__name__}; fix --nats")
            self._ready.set()
            return

        async def on_request(msg: Any) -> None:
            answer = self.request(msg.subject, msg.data)
            if answer is not None:
                await nc.publish(*answer)

        await nc.subscribe("edgekit.v1.*.*.chunk.request", queue=self.group, cb=on_request)
        consumer = None
        if self.server.ingest is not None:
            try:
                consumer = await self._reports(nc)
            except Exception as exc:
                self._failed.append(str(exc) or type(exc).__name__)
                self._ready.set()
                await nc.close()
                return
        await nc.flush()
        self._ready.set()
        pull = asyncio.ensure_future(self._pull(consumer)) if consumer is not None else None
        await self._done.wait()
        if pull is not None:
            await pull
            # what is already taken gets stored and acknowledged before the worker leaves
            await asyncio.get_running_loop().run_in_executor(None, self.server.ingest.flush, 10.0)
        await nc.drain()

    async def _reports(self, nc: Any) -> Any:
        """The shared durable consumer of device reports (created by the first worker, bound by the others)."""
        import asyncio

        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        js = nc.jetstream()
        for attempt in range(20):
            try:
                await js.stream_info(self.MQTT_STREAM)
                break
            except NotFoundError:
                # nats-server creates its MQTT streams when the first MQTT client connects
                if attempt == 0 and self.server.broker:
                    await asyncio.get_running_loop().run_in_executor(None, self._touch_mqtt)
                await asyncio.sleep(0.5)
        else:
            raise ClusterNotReady(
                f"the NATS cluster has no {self.MQTT_STREAM} stream: enable its MQTT listener "
                "(mqtt { listen: ... } with JetStream) and give the MQTT URL with --broker"
            )
        config = ConsumerConfig(durable_name=self.group, filter_subject=f"{self.MQTT_PREFIX}edgekit.v1.>",
                                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ACK_WAIT, max_ack_pending=50_000,
                                max_waiting=512, inactive_threshold=self.KEEP_WHILE_DOWN)  # fmt: skip
        await js.add_consumer(self.MQTT_STREAM, config)
        return await js.pull_subscribe_bind(self.group, self.MQTT_STREAM)

    def _touch_mqtt(self) -> None:
        """One MQTT connection makes nats-server create its MQTT streams (this runs in a thread)."""
        try:
            c = mqtt.client("serve-probe")
            mqtt.connect(c, self.server.broker, timeout=5)
            c.disconnect()
            c.loop_stop()
        except mqtt.BrokerUnreachable:
            pass  # reported as the missing stream

    async def _pull(self, consumer: Any) -> None:
        import asyncio

        import nats.errors

        loop = asyncio.get_running_loop()
        while not self._done.is_set():
            try:
                batch = await consumer.fetch(self.BATCH, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error:
                await asyncio.sleep(0.5)  # a node went away or a consumer leader is being elected
                continue
            except Exception:  # supervised: the consumer loop is the only way reports get in
                self.server.failures += 1
                log.exception("pulling reports from the NATS cluster failed; pulling again")
                await asyncio.sleep(0.5)
                continue
            for msg in batch:

                def done(msg: Any = msg) -> None:  # called from the ingest thread once committed
                    loop.call_soon_threadsafe(lambda: asyncio.ensure_future(msg.ack()))

                if not self.report(msg.subject, msg.data, done):
                    await msg.ack()  # desired states and inference replies share the stream

    # -- the two handlers: plain methods, so the transport only moves bytes (and they can be fuzzed) --------
    def request(self, subject: str, data: bytes) -> tuple[str, bytes] | None:
        """(subject, bytes) answering one chunk request from the queue group, or None to send nothing."""
        try:
            fleet, device, _ = parse_topic(topic_of(subject))
            response = self.server.answer(ChunkRequest.from_json(data))
        except ProtocolError:
            self.server.refused += 1
            return None
        except Exception:  # never let one request end the subscription's callback task for good
            self.server.failures += 1
            log.exception("answering a chunk request on %s failed", subject[:200])
            return None
        if response is None:
            return None
        return subject_of(topic(fleet, device, "chunk/response")), response.to_bytes()

    def report(self, subject: str, data: bytes, done: Any) -> bool:
        """Hand one message of the MQTT gateway's stream to ingest (``done`` once stored); False when it is not
        a device report, which the caller acknowledges at once."""
        name = topic_of(subject[len(self.MQTT_PREFIX) :]) if subject.startswith(self.MQTT_PREFIX) else ""
        if name.rsplit("/", 1)[-1] not in self.REPORTS:
            return False
        self.server.ingest.accept(name, data, done)
        return True

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(15)
