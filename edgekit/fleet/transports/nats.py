"""``edgekit serve --nats``: the package server on a NATS cluster's native port."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlparse

from edgekit_agent.protocol import (
    ANY,
    REPORT_KINDS,
    ChunkRequest,
    ProtocolError,
    parse_topic,
    subject_of,
    subscription,
    topic,
    topic_of,
)

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt

log = logging.getLogger("edgekit.serve")


class ClusterNotReady(EdgekitError):
    pass


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
    REPORTS = REPORT_KINDS
    BATCH = 512
    ACK_WAIT = 30.0
    # while no worker pulls, the consumer keeps reports in the cluster; after this long it is removed, so a
    # serve group that is gone for good does not make the cluster keep every QoS 1 message forever
    KEEP_WHILE_DOWN = 24 * 3600.0

    def __init__(self, server: Any, urls: str, *, group: str) -> None:
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

        await nc.subscribe(subject_of(subscription(ANY, "chunk/request")), queue=self.group, cb=on_request)
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
        every = self.MQTT_PREFIX + subject_of(subscription(ANY, None))
        config = ConsumerConfig(durable_name=self.group, filter_subject=every,
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
