"""``edgekit serve``: answer devices' chunk requests from a folder of .edgepkg files, ingest what they report.

Packages are indexed by the sha256 of their bytes (what ``desired`` names); an unknown hash triggers one
re-scan, so packages dropped into the folder are served without a restart. Requests are parsed in paho's
thread and served by a worker pool reading with ``os.pread`` from open files: no file is read whole.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.protocol import ChunkRequest, ChunkResponse, ProtocolError, parse_topic, topic

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt


class PackagesNotFound(EdgekitError):
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
    served: int = 0
    refused: int = 0
    _index: dict[str, Path] = field(default_factory=dict)
    _fds: dict[str, int] = field(default_factory=dict)
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

    def _fd(self, sha: str) -> int | None:
        if sha not in self._index:
            self.rescan()
        path = self._index.get(sha)
        if path is None:
            return None
        with self._lock:
            if sha not in self._fds:
                self._fds[sha] = os.open(path, os.O_RDONLY)
            return self._fds[sha]

    def answer(self, request: ChunkRequest) -> ChunkResponse | None:
        """The response to one request (None: send nothing, the device will time out and ask again)."""
        return self._read(request)

    def _read(self, request: ChunkRequest) -> ChunkResponse:
        fd = self._fd(request.sha256)
        if fd is None:
            self.refused += 1
            return ChunkResponse(request.request_id, request.sha256, request.offset, b"", "",
                                 error=f"no package with sha256 {request.sha256[:12]}… in the repository")  # fmt: skip
        data = os.pread(fd, request.length, request.offset)
        self.served += 1
        key = (request.sha256, request.offset, len(data))
        digest = self._chunk_hashes.get(key)
        if digest is None:
            digest = self._chunk_hashes[key] = hashlib.sha256(data).hexdigest()
        return ChunkResponse(request.request_id, request.sha256, request.offset, data, digest)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if self.ingest is not None and not msg.topic.endswith("/chunk/request"):
            self.ingest.accept(msg.topic, msg.payload)
            return
        try:
            fleet, device, _ = parse_topic(msg.topic)
            self._queue.put_nowait((fleet, device, ChunkRequest.from_json(msg.payload)))
        except (ProtocolError, queue.Full):
            self.refused += 1  # a malformed or excess request: the device times out and asks again

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                fleet, device, request = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            response = self.answer(request)
            if response is not None:
                self.client.publish(topic(fleet, device, "chunk/response"), response.to_bytes(), qos=0)

    def start(self) -> None:
        if self.ingest is not None:
            self.ingest.start()
        if self.nats:
            self._nats = NatsTransport(self, self.nats, group=self.share or "edgekit-serve")
            self._nats.start()
            return
        self.client = mqtt.client("serve", self.session)
        self.client.on_message = self._on_message
        kinds = ["chunk/request"] + (["state", "telemetry", "events"] if self.ingest is not None else [])
        prefix = f"$share/{self.share}/" if self.share else ""
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{prefix}edgekit/v1/+/+/{k}", 1) for k in kinds])
        mqtt.connect(self.client, self.broker)
        for _ in range(self.workers):
            threading.Thread(target=self._work, daemon=True, name="edgekit-serve").start()

    def stop(self) -> None:
        self._stop.set()
        if self.nats:
            self._nats.stop()
        else:
            self.client.disconnect()
            self.client.loop_stop()
        if self.ingest is not None:
            self.ingest.stop()
        for fd in self._fds.values():
            os.close(fd)


def subject_of(topic_name: str) -> str:
    """The NATS subject an MQTT topic arrives on (NATS 2.9 refuses topics with '.', so this is exact)."""
    return topic_name.replace("/", ".")


def topic_of(subject: str) -> str:
    """The MQTT topic a NATS subject came from: the inverse of :func:`subject_of`."""
    return subject.replace(".", "/")


class NatsTransport:
    """``edgekit serve --nats``: the same server on a NATS cluster's native port, through a queue group.

    Devices still speak MQTT to the cluster; their topics arrive as subjects (``edgekit/v1/f/d/telemetry`` ⇄
    ``edgekit.v1.f.d.telemetry``). Every worker subscribes with the same queue group, so NATS hands each
    message to exactly one of them; chunk responses are published on the response topic's subject and reach
    the device's MQTT subscription. nats-py's own reconnect moves a worker to a surviving node.
    """

    KINDS = ("chunk.request", "state", "telemetry", "events")

    def __init__(self, server: PackageServer, urls: str, *, group: str) -> None:
        self.server, self.group = server, group
        self.urls = [u.strip() for u in urls.split(",") if u.strip()]
        self._loop: Any = None
        self._ready = threading.Event()
        self._failed: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgekit-serve-nats")

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failed:
            reason = self._failed[0] if self._failed else f"no answer within {timeout:.0f} s"
            raise mqtt.BrokerUnreachable(f"cannot reach NATS at {', '.join(self.urls)} ({reason}); fix --nats")

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
        try:
            nc = await nats.connect(servers=self.urls, name=f"edgekit-serve-{self.group}", connect_timeout=5,
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.5)  # fmt: skip
        except Exception as exc:  # nats-py raises several types for an unreachable cluster
            self._failed.append(str(exc) or type(exc).__name__)
            self._ready.set()
            return
        ingest = self.server.ingest

        async def on_request(msg: Any) -> None:
            try:
                fleet, device, _ = parse_topic(topic_of(msg.subject))
                response = self.server.answer(ChunkRequest.from_json(msg.data))
            except ProtocolError:
                self.server.refused += 1
                return
            if response is not None:
                await nc.publish(subject_of(topic(fleet, device, "chunk/response")), response.to_bytes())

        async def on_report(msg: Any) -> None:
            ingest.accept(topic_of(msg.subject), msg.data)

        kinds = self.KINDS if ingest is not None else self.KINDS[:1]
        for kind in kinds:
            await nc.subscribe(f"edgekit.v1.*.*.{kind}", queue=self.group,
                               cb=on_request if kind == "chunk.request" else on_report)  # fmt: skip
        await nc.flush()
        self._ready.set()
        await self._done.wait()
        await nc.drain()  # what this worker already took is handled before it leaves

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(15)
