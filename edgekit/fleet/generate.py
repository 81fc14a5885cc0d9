"""``edgekit fleet generate DEVICE PROMPT``: ask a device to generate and hand over the stream as it arrives.

The answers come on ``generate/response`` with a ``seq``; MQTT keeps one publisher's QoS 1 messages in
order, and a gap (a lost message) is reported rather than glossed over. Ctrl-C sends a cancel.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from edgekit_agent.protocol import ProtocolError, loads, topic

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt


class GenerateFailed(EdgekitError):
    exit_code = 3


class Generation:
    """One request's stream: iterate for the messages (deltas, then the final one); ``cancel()`` to stop it."""

    def __init__(self, broker: str, fleet: str, device: str, request: dict[str, Any], *, timeout: float) -> None:
        self.fleet, self.device, self.timeout = fleet, device, timeout
        self.id = request.setdefault("id", f"g{uuid.uuid4().hex[:12]}")
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.c = mqtt.client("generate")
        subscribed = threading.Event()
        self.c.on_message = lambda _c, _u, msg: self.inbox.put(bytes(msg.payload))
        self.c.on_connect = lambda client, *_a: client.subscribe(topic(fleet, device, "generate/response"), qos=1)
        self.c.on_subscribe = lambda *_a: subscribed.set()
        mqtt.connect(self.c, broker)
        if not subscribed.wait(10):  # listening before asking: the first delta must not come before we listen
            self.close()
            raise GenerateFailed(f"the broker at {broker} did not confirm the generate/response subscription in 10 s")
        self._publish(request)

    def _publish(self, body: dict[str, Any]) -> None:
        self.c.publish(
            topic(self.fleet, self.device, "generate/request"), json.dumps(body).encode(), qos=1
        ).wait_for_publish(10)

    def cancel(self) -> None:
        self._publish({"id": self.id, "cancel": True})

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The messages of this request in ``seq`` order; ends after the final one (``done``)."""
        expected = 0
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GenerateFailed(
                    f"{self.device} sent no answer for {self.timeout:.0f} s; is it online and "
                    "serving a language-model package? (edgekit fleet status)"
                )
            try:
                payload = self.inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            try:
                body = loads(payload)
            except ProtocolError:
                continue
            if body.get("id") not in (self.id, None):
                continue  # another client's generation on the same device
            if body.get("id") is None and "error" not in body:
                continue
            deadline = time.monotonic() + self.timeout  # a stream that moves is not timed out
            seq = body.get("seq")
            if isinstance(seq, int) and seq != expected and body.get("id") == self.id:
                raise GenerateFailed(f"message {expected} of the stream was lost (got {seq}); ask again")
            expected += 1
            yield body
            if body.get("done"):
                return


def generate(broker: str, fleet: str, device: str, request: dict[str, Any], *, timeout: float = 60.0) -> Generation:
    return Generation(broker, fleet, device, request, timeout=timeout)
