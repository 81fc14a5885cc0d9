"""``edgekit sim agents N``: many light simulated devices for load tests and demos.

Each simulated device is a real MQTT client (its own connection, last will, retained ``online`` state,
QoS1 telemetry on the real topic) but runs no model: its telemetry says ``"simulated": true``, its latency
is drawn from a fixed distribution and its power is ``none``. ``--real`` instead starts real agents
(``edgekit_agent.Agent``) in this process, which download, verify, install and serve what they are told.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgekit_agent.protocol import dumps, topic

from edgekit.fleet import mqtt


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SimDevice:
    fleet: str
    device: str
    profile: str
    broker: str
    seed: int = 0
    sent: int = 0
    acked: int = 0
    _client: Any = None
    _rng: random.Random = field(default_factory=random.Random)

    def _state(self, status: str) -> bytes:
        return dumps({"status": status, "device": self.device, "profile": self.profile, "agent_version": "sim",
                      "package": None, "runtime": None, "capabilities": {"runtimes": []}, "simulated": True,
                      "time": _now()})  # fmt: skip

    def start(self) -> None:
        self._rng.seed(self.seed)
        c = mqtt.client(f"sim-{self.device}")
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        c.will_set(topic(self.fleet, self.device, "state"), self._state("offline"), qos=1, retain=True)
        c.on_publish = self._on_publish
        mqtt.connect(c, self.broker, timeout=30)
        c.publish(topic(self.fleet, self.device, "state"), self._state("online"), qos=1, retain=True)
        self._client = c

    def _on_publish(self, *_args: Any) -> None:
        self.acked += 1

    def telemetry(self, seq: int, interval: float) -> None:
        p50 = self._rng.uniform(0.8, 1.2)
        body = {"interval_s": interval, "inferences": 10, "errors": 0, "throughput_per_s": 10 / interval,
                "latency_ms": {"p50": p50, "p95": p50 * 1.4, "p99": p50 * 1.8}, "cpu_percent": 5.0,
                "rss_bytes": 50 << 20, "temperature_c": None,
                "power": {"watts": None, "source": "none", "measured": False},
                "energy_per_inference_mj": None, "energy_is_estimate": True, "dropped_messages": 0,
                "package": None, "runtime": None, "simulated": True, "seq": seq, "time": _now()}  # fmt: skip
        self._client.publish(topic(self.fleet, self.device, "telemetry"), dumps(body), qos=1)
        self.sent += 1

    def stop(self, graceful: bool = True) -> None:
        if self._client is None:
            return
        if graceful:
            info = self._client.publish(topic(self.fleet, self.device, "state"), self._state("offline"), qos=1,
                                        retain=True)  # fmt: skip
            info.wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Simulation:
    """``count`` devices sending ``messages`` telemetry messages each, ``rate`` per second per device."""

    broker: str
    fleet: str
    count: int
    profile: str = "x86-64-generic"
    prefix: str = "sim"
    devices: list[SimDevice] = field(default_factory=list)

    def start(self) -> None:
        self.devices = [SimDevice(self.fleet, f"{self.prefix}-{i:04d}", self.profile, self.broker, seed=i)
                        for i in range(self.count)]  # fmt: skip
        for d in self.devices:
            d.start()

    def run(self, *, messages: int, rate: float | None, stop: threading.Event | None = None) -> float:
        """Send ``messages`` per device (rate None: as fast as paho takes them); returns the seconds taken."""
        t0 = time.perf_counter()
        interval = 1.0 / rate if rate else 0.0
        for seq in range(messages):
            if stop is not None and stop.is_set():
                break
            tick = time.perf_counter()
            for d in self.devices:
                d.telemetry(seq, interval or 1.0)
            if interval:
                time.sleep(max(0.0, interval - (time.perf_counter() - tick)))
        return time.perf_counter() - t0

    def wait_acked(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(d.acked >= d.sent + 1 for d in self.devices):  # + the online state
                return True
            time.sleep(0.05)
        return False

    @property
    def sent(self) -> int:
        return sum(d.sent for d in self.devices)

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
