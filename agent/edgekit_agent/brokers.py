"""The client side of a broker connection, for agent and host alike: one paho client factory
(:func:`new_client`: callbacks, protocol, queue size, TCP_NODELAY, credentials, TLS), several broker URLs
and moving between them when one goes away (a clustered broker's nodes).

``--broker mqtt://n1:1883,mqtt://n2:1883,mqtt://n3:1883``: the client connects to the first; when the
connection drops or a reconnect fails it moves to the next, round robin, with paho's own backoff
(randomised by the agent) between tries. Session semantics come from the client: on every connect it
re-subscribes, the broker re-delivers the retained ``desired`` state, queued telemetry is flushed and an
interrupted download resumes from the chunks on disk.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse


class BrokerListError(ValueError):
    """A --broker value that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


def parse_brokers(spec: str, *, tls: bool = False) -> list[Endpoint]:
    """``spec`` is one URL or a comma-separated list; ``tls`` forces TLS (a CA was given)."""
    endpoints = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        url = urlparse(item if "://" in item else f"mqtt://{item}")
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise BrokerListError(f"--broker {item!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        secure = tls or url.scheme == "mqtts"
        endpoints.append(Endpoint(url.hostname, url.port or (8883 if secure else 1883), secure))
    if not endpoints:
        raise BrokerListError("--broker is empty; give mqtt://HOST:PORT (or several, separated by commas)")
    if len({e.tls for e in endpoints}) > 1:
        raise BrokerListError("--broker mixes mqtt:// and mqtts:// URLs; use one scheme for every node")
    return endpoints


@dataclass(frozen=True)
class Credentials:
    """Who the client is to the broker and how it checks the broker: a password, TLS files (each optional)."""

    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_url(
        cls, url: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None
    ) -> Credentials:
        """``mqtts://USER:PASSWORD@HOST:PORT`` (percent-encoded), with the TLS files given apart."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        user = unquote(parsed.username) if parsed.username else None
        return cls(user, unquote(parsed.password or "") if user else None, parsed.scheme == "mqtts", ca, cert, key)


def tcp_nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: send small messages at once.

    paho leaves Nagle's algorithm on, so a chunk request published just after another message waited for
    the broker's delayed ACK: 40 ms before the first chunk of every download (measured: a 25.9 MB pull
    took 95 ms, 43 ms of it before the first response).
    """
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a websocket wrapper, a unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(client_id: str, *, clean_session: bool = True, manual_ack: bool = False, queue: int = 1000) -> Any:
    """The one way a paho client is made, on the device and on the host.

    MQTT 3.1.1 (what Mosquitto and the NATS gateway both speak), paho's VERSION2 callbacks, a bounded
    queue of outgoing messages (``queue``; paho's default is unbounded), TCP_NODELAY on every socket.
    ``clean_session=False``: the broker keeps the session and queues QoS 1 messages while the client is
    away. ``manual_ack``: the program acknowledges each QoS 1 message itself, once it has kept it.
    Credentials are applied by :func:`secure`, when the broker URL is known.
    """
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         protocol=mqtt.MQTTv311, manual_ack=manual_ack)  # fmt: skip
    client.max_queued_messages_set(queue)
    client.on_socket_open = tcp_nodelay
    return client


def secure(client: Any, credentials: Credentials) -> None:
    """Username/password and TLS (TLS 1.2 or later, the broker's certificate checked against ``ca``)."""
    import ssl

    if credentials.username:
        client.username_pw_set(credentials.username, credentials.password)
    if credentials.tls:
        client.tls_set(ca_certs=credentials.ca, certfile=credentials.cert, keyfile=credentials.key,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)  # fmt: skip


class Failover:
    """Points a paho client at the next endpoint whenever its connection is lost or cannot be made."""

    def __init__(self, endpoints: list[Endpoint], *, index: int = 0) -> None:
        self.endpoints = endpoints
        self.index = index
        self.moves = 0

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self.index]

    def next(self, client: Any, reason: Any = None) -> None:
        """Called from paho's thread (on_disconnect / on_connect_fail): paho's loop reconnects to the new host.

        A disconnect the program asked for (``reason`` not a failure) must not become a reconnect.
        """
        if len(self.endpoints) < 2 or (reason is not None and not getattr(reason, "is_failure", True)):
            return
        self.index = (self.index + 1) % len(self.endpoints)
        self.moves += 1
        e = self.current
        client.connect_async(e.host, e.port, keepalive=30)


#: Seconds after a reconnect at which the retained topics are asked for again, each after the one before.
REREAD_AFTER = (3.0, 10.0, 30.0)


def reread_retained(
    client: Any, topics: list[str], still_same: Callable[[], bool], delays: tuple[float, ...] = REREAD_AFTER
) -> None:
    """Subscribe to ``topics`` again (QoS 0) at ``delays`` after a reconnect, while ``still_same()`` holds.

    A clustered broker's nodes learn retained messages asynchronously: on NATS each node's view follows a
    JetStream consumer, which stalls while a lost node's streams elect new leaders. A device that reconnects
    to another node in that window subscribes against a stale view and misses a ``desired`` state published
    meanwhile (or the retained will that says it is offline), and nothing would send it again: the device
    would sit on the old package. MQTT sends the retained messages again on every SUBSCRIBE, an existing
    subscription included, so asking again once the cluster has settled narrows the window (it does not
    close it: a node whose view stays stale past the last re-read still hides the message; docs/scaling.md).
    What arrives twice is harmless: an agent ignores the desired state it already runs. One timer thread
    at a time.
    """
    if not delays:
        return

    def fire() -> None:
        if not still_same():
            return
        client.subscribe([(t, 0) for t in topics])
        reread_retained(client, topics, still_same, delays[1:])

    timer = threading.Timer(delays[0], fire)
    timer.daemon = True
    timer.start()
