"""Several broker URLs and moving between them when one goes away (a clustered broker's nodes).

``--broker mqtt://n1:1883,mqtt://n2:1883,mqtt://n3:1883``: the client connects to the first; when the
connection drops or a reconnect fails it moves to the next, round robin, with paho's own backoff
(randomised by the agent) between tries. Session semantics come from the client: on every connect it
re-subscribes, the broker re-delivers the retained ``desired`` state, queued telemetry is flushed and an
interrupted download resumes from the chunks on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse


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
