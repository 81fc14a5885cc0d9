"""One way for the host to open a paho client: VERSION2 callbacks, unique id, bounded queue, URL parsing.

A secured broker (``edgekit broker config``) is reached with ``mqtts://USER:PASSWORD@HOST:PORT`` and the
TLS files in ``$EDGEKIT_MQTT_CA``, ``$EDGEKIT_MQTT_CERT`` and ``$EDGEKIT_MQTT_KEY``.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlparse

from edgekit_agent.brokers import BrokerListError, Endpoint, Failover, parse_brokers
from edgekit_agent.protocol import tcp_nodelay

from edgekit.errors import EdgekitError


class BrokerUnreachable(EdgekitError):
    pass


def endpoints(url: str) -> list[Endpoint]:
    """One URL, or a cluster's nodes separated by commas."""
    try:
        return parse_brokers(url)
    except BrokerListError as exc:
        raise BrokerUnreachable(str(exc)) from None


def _secure(c: Any, url: str) -> None:
    import os
    import ssl
    from urllib.parse import unquote

    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.username:
        c.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
    if parsed.scheme == "mqtts":
        env = {k: os.environ.get(f"EDGEKIT_MQTT_{k.upper()}") for k in ("ca", "cert", "key")}
        c.tls_set(ca_certs=env["ca"], certfile=env["cert"], keyfile=env["key"], tls_version=ssl.PROTOCOL_TLS_CLIENT)


def client(role: str, session: str | None = None, *, manual_ack: bool = False) -> Any:
    """A client with a unique id, or with ``session`` a fixed id and a persistent session: the broker then
    queues QoS1 messages for it while it is away and delivers them when it comes back. ``manual_ack``: the
    program acknowledges each QoS1 message itself (``c.ack(mid, qos)``), e.g. once it is stored."""
    import paho.mqtt.client as mqtt

    v2 = mqtt.CallbackAPIVersion.VERSION2
    if session is None:
        c = mqtt.Client(v2, client_id=f"edgekit-{role}-{uuid.uuid4().hex[:8]}", manual_ack=manual_ack)
    else:
        c = mqtt.Client(v2, client_id=_session_id(role, session), clean_session=False, manual_ack=manual_ack)
    c.max_queued_messages_set(1000)
    c.on_socket_open = tcp_nodelay
    return c


def _session_id(role: str, session: str) -> str:
    return f"edgekit-{role}-{session}"


def end_session(url: str, role: str, session: str) -> None:
    """Drop a persistent session: a clean connect under its client id, so the broker stops queueing for it."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=_session_id(role, session), clean_session=True)
    connect(c, url)
    c.disconnect()
    c.loop_stop()


def connect(c: Any, url: str, *, timeout: float = 10.0) -> None:
    """Connect and start the network loop, or fail with one line naming the broker.

    With several URLs (a cluster) the first node that answers is used, and a lost connection moves on to
    the next node (``edgekit_agent.brokers.Failover``) instead of waiting for the lost one to come back.
    """
    nodes = endpoints(url)
    _secure(c, url.split(",")[0].strip())  # the nodes of one cluster share credentials and CA
    for i, node in enumerate(nodes):
        try:
            _connect(c, node.host, node.port, timeout)
        except BrokerUnreachable:
            if i == len(nodes) - 1:
                raise
            continue
        if len(nodes) > 1:
            _follow(c, Failover(nodes, index=i))
        return


def _follow(c: Any, failover: Failover) -> None:
    previous = c.on_disconnect

    def on_disconnect(client: Any, *args: Any) -> None:
        if previous:
            previous(client, *args)
        failover.next(client, args[2])

    c.on_disconnect = on_disconnect
    c.on_connect_fail = lambda client, _u: failover.next(client)


def _connect(c: Any, host: str, port: int, timeout: float) -> None:
    import threading

    ready = threading.Event()
    previous = c.on_connect

    refused: list[str] = []

    def on_connect(*args: Any) -> None:
        if args[3].is_failure:
            refused.append(str(args[3]))
        ready.set()
        if previous:
            previous(*args)

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=30)
    except OSError as exc:
        c.on_connect = previous
        raise BrokerUnreachable(f"cannot reach the MQTT broker at {host}:{port} ({exc.strerror or exc}); "
                                "start mosquitto or fix --broker") from None  # fmt: skip
    c.loop_start()
    if not ready.wait(timeout):
        c.loop_stop()
        c.on_connect = previous
        raise BrokerUnreachable(f"the MQTT broker at {host}:{port} did not answer within {timeout:.0f} s")
    if refused:
        c.loop_stop()
        raise BrokerUnreachable(f"the MQTT broker at {host}:{port} refused the connection ({refused[0]}); "
                                "check the username/password in --broker")  # fmt: skip
