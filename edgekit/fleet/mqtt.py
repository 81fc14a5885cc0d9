"""The host's side of the MQTT transport: a client per role (made by ``edgekit_agent.brokers.new_client``,
the factory the agent uses too), connecting with failover and one-line errors, and :class:`DesiredPublisher`,
the one place a ``desired`` state is published and its acknowledgement awaited.

A secured broker (``edgekit broker config``) is reached with ``mqtts://USER:PASSWORD@HOST:PORT`` and the
TLS files in ``$EDGEKIT_MQTT_CA``, ``$EDGEKIT_MQTT_CERT`` and ``$EDGEKIT_MQTT_KEY``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from edgekit_agent.brokers import BrokerListError, Credentials, Endpoint, Failover, new_client, parse_brokers, secure
from edgekit_agent.protocol import Desired, topic

from edgekit.errors import EdgekitError


class BrokerUnreachable(EdgekitError):
    pass


def endpoints(url: str) -> list[Endpoint]:
    """One URL, or a cluster's nodes separated by commas."""
    try:
        return parse_brokers(url)
    except BrokerListError as exc:
        raise BrokerUnreachable(str(exc)) from None


def _credentials(url: str) -> Credentials:
    files = {k: os.environ.get(f"EDGEKIT_MQTT_{k.upper()}") for k in ("ca", "cert", "key")}
    return Credentials.from_url(url, **files)


def client(role: str, session: str | None = None, *, manual_ack: bool = False) -> Any:
    """A client with a unique id, or with ``session`` a fixed id and a persistent session: the broker then
    queues QoS1 messages for it while it is away and delivers them when it comes back. ``manual_ack``: the
    program acknowledges each QoS1 message itself (``c.ack(mid, qos)``), e.g. once it is stored."""
    if session is None:
        return new_client(f"edgekit-{role}-{uuid.uuid4().hex[:8]}", manual_ack=manual_ack)
    return new_client(_session_id(role, session), clean_session=False, manual_ack=manual_ack)


def _session_id(role: str, session: str) -> str:
    return f"edgekit-{role}-{session}"


def end_session(url: str, role: str, session: str) -> None:
    """Drop a persistent session: a clean connect under its client id, so the broker stops queueing for it."""
    c = new_client(_session_id(role, session))
    connect(c, url)
    c.disconnect()
    c.loop_stop()


def connect(c: Any, url: str, *, timeout: float = 10.0) -> None:
    """Connect and start the network loop, or fail with one line naming the broker.

    With several URLs (a cluster) the first node that answers is used, and a lost connection moves on to
    the next node (``edgekit_agent.brokers.Failover``) instead of waiting for the lost one to come back.
    """
    nodes = endpoints(url)
    secure(c, _credentials(url.split(",")[0].strip()))  # the nodes of one cluster share credentials and CA
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
        raise BrokerUnreachable(f"the MQTT broker at {host}:{port} did not answer within {timeout:.0f} s; is an MQTT "
                                "broker (mosquitto) listening there? check --broker")  # fmt: skip
    if refused:
        c.loop_stop()
        raise BrokerUnreachable(f"the MQTT broker at {host}:{port} refused the connection ({refused[0]}); "
                                "check the username/password in --broker")  # fmt: skip


class DesiredPublisher:
    """Publishes retained QoS 1 ``desired`` states through one connection, made on first use and made again
    when lost, and returns only once the broker has acknowledged every one (deploy, rollout, reconciler).

    Over MQTT, also on a NATS cluster: only a message published through its MQTT gateway becomes the
    retained message a device's subscription delivers.
    """

    def __init__(self, broker: str, role: str = "deploy", *, timeout: float = 30.0) -> None:
        self.broker, self.role, self.timeout = broker, role, timeout
        self._client: Any = None

    def publish(self, fleet: str, devices: list[str], desired: Desired | None) -> None:
        """``None`` clears the retained message (a device ignores an empty one and keeps what it runs)."""
        if self._client is None or not self._client.is_connected():
            self.close()
            self._client = client(self.role)
            connect(self._client, self.broker)
        payload = desired.to_json() if desired is not None else b""
        infos = [self._client.publish(topic(fleet, d, "desired"), payload, qos=1, retain=True) for d in devices]
        for info in infos:
            info.wait_for_publish(timeout=self.timeout)
            if not info.is_published():
                raise BrokerUnreachable(f"the broker at {self.broker} did not acknowledge the desired state")

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> DesiredPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
