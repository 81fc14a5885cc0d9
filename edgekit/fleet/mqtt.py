"""One way for the host to open a paho client: VERSION2 callbacks, unique id, bounded queue, URL parsing."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlparse

from edgekit.errors import EdgekitError


class BrokerUnreachable(EdgekitError):
    pass


def endpoint(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise BrokerUnreachable(f"--broker {url!r} must look like mqtt://HOST:PORT")
    return parsed.hostname, parsed.port or 1883


def client(role: str) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgekit-{role}-{uuid.uuid4().hex[:8]}")
    c.max_queued_messages_set(1000)
    return c


def connect(c: Any, url: str, *, timeout: float = 10.0) -> None:
    """Connect and start the network loop, or fail with one line naming the broker."""
    import threading

    host, port = endpoint(url)
    ready = threading.Event()
    previous = c.on_connect

    def on_connect(*args: Any) -> None:
        ready.set()
        if previous:
            previous(*args)

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=30)
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the MQTT broker at {host}:{port} ({exc.strerror or exc}); "
                                "start mosquitto or fix --broker") from None  # fmt: skip
    c.loop_start()
    if not ready.wait(timeout):
        c.loop_stop()
        raise BrokerUnreachable(f"the MQTT broker at {host}:{port} did not answer within {timeout:.0f} s")
