"""The host's side of the agent tests: a real paho client that publishes desired state and records
everything devices publish (state, events, telemetry, inference responses, chunk requests)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from edgekit_agent.protocol import Desired, subscription, topic


class Host:
    def __init__(self, url: str, fleet: str = "lab", device: str = "dev-1") -> None:
        import paho.mqtt.client as mqtt

        self.fleet, self.device = fleet, device
        self.messages: dict[str, list[Any]] = defaultdict(list)
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-host-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(subscription(fleet, None, device=device), qos=1)
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.wait_for(lambda: self.client.is_connected(), "host connected")
        time.sleep(0.2)  # the subscription is in place

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        kind = msg.topic.split("/", 4)[4]
        try:
            payload: Any = json.loads(msg.payload)
        except (ValueError, RecursionError):  # binary chunks, or a hostile test's own echo: kept as bytes
            payload = msg.payload
        with self._cond:
            self.messages[kind].append(payload)
            self._cond.notify_all()

    def publish(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic(self.fleet, self.device, kind), payload, qos=1, retain=retain).wait_for_publish(5)

    def desire(self, desired: Desired) -> None:
        self.publish("desired", desired.to_json(), retain=True)

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = {k: v[-3:] for k, v in self.messages.items() if k != "chunk/request"}
                    raise AssertionError(f"timed out waiting for {what}; seen: {seen}")
                self._cond.wait(min(left, 0.2))

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.messages["events"] if isinstance(e, dict) and (kind is None or e["kind"] == kind)]

    def event_matching(self, kind: str, text: str, timeout: float = 30.0) -> dict:
        return self.wait_for(
            lambda: next((e for e in self.events(kind) if text in json.dumps(e)), None),
            f"{kind} event '{text}'",
            timeout,
        )

    def infer(self, inputs: dict, timeout: float = 10.0) -> dict:
        rid = uuid.uuid4().hex[:12]
        self.publish("infer/request", json.dumps({"id": rid, "inputs": inputs}).encode())
        return self.wait_for(
            lambda: next(
                (r for r in self.messages["infer/response"] if isinstance(r, dict) and r.get("id") == rid), None
            ),
            f"infer response {rid}",
            timeout,
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def served_repo(tmp_path, broker_url: str, device: str = "dev-1"):
    """A signing key pair, an empty package repository answered by a real ``PackageServer`` on the broker,
    and a :class:`Host` listening to ``device``: what every agent test starts from.
    Yields (keys, repo, host, server)."""
    import pkgs

    from edgekit.fleet.serve import PackageServer

    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    server = PackageServer(repo, broker_url)
    server.start()
    host = Host(broker_url, device=device)
    try:
        yield keys, repo, host, server
    finally:
        server.stop()
        host.close()
