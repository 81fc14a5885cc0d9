"""``edgekit serve`` on an MQTT broker: paho's thread parses, a pool of workers answers chunk requests."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from edgekit_agent.protocol import ANY, REPORT_KINDS, ChunkRequest, ProtocolError, parse_topic, subscription, topic

from edgekit.fleet import mqtt

log = logging.getLogger("edgekit.serve")


class MqttTransport:
    """``session``: a persistent session (what devices report while serve is down is kept by the broker);
    ``share``: a shared-subscription group, so several serve workers split the messages."""

    def __init__(self, server: Any, broker: str, *, workers: int = 2, session: str | None = None,
                 share: str | None = None) -> None:  # fmt: skip
        self.server, self.broker, self.workers = server, broker, workers
        kinds = ("chunk/request", *(REPORT_KINDS if server.ingest is not None else ()))
        self.filters = [(subscription(ANY, kind, share=share), 1) for kind in kinds]
        self.client = mqtt.client("serve", session, manual_ack=True)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(self.filters)
        self._queue: queue.Queue = queue.Queue(maxsize=1024)
        self._stop = threading.Event()

    def start(self) -> None:
        mqtt.connect(self.client, self.broker)
        for _ in range(self.workers):
            threading.Thread(target=self._work, daemon=True, name="edgekit-serve").start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        """Reports are acknowledged to the broker only once stored (a serve killed with a batch in hand lost
        it when paho acknowledged on receipt); chunk requests at once: a lost one is asked for again."""
        ingest = self.server.ingest
        if ingest is not None and not msg.topic.endswith("/chunk/request"):
            mid, qos = msg.mid, msg.qos
            ingest.accept(msg.topic, msg.payload, lambda: self.client.ack(mid, qos))
            return
        self.client.ack(msg.mid, msg.qos)
        try:
            fleet, device, _ = parse_topic(msg.topic)
            self._queue.put_nowait((fleet, device, ChunkRequest.from_json(msg.payload)))
        except (ProtocolError, queue.Full):
            self.server.refused += 1  # a malformed or excess request: the device times out and asks again

    def _work(self) -> None:
        """One chunk worker. A request that fails in an unexpected way is logged and counted, and the worker
        goes on: an exception here would end the thread, and no device would get a chunk again while serve
        looked healthy."""
        while not self._stop.is_set():
            try:
                fleet, device, request = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                response = self.server.answer(request)
                if response is not None:
                    self.client.publish(topic(fleet, device, "chunk/response"), response.to_bytes(), qos=0)
            except Exception:
                self.server.failures += 1
                log.exception("answering a chunk request of %s/%s failed", fleet, device)

    def stop(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
