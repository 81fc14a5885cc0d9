"""``edgekit sim agents N``: many light simulated devices for load tests and demos.

Each simulated device is a real MQTT client (its own connection, last will, retained ``online`` state,
QoS1 telemetry on the real topic) but runs no model: its telemetry says ``"simulated": true``, its latency
is drawn from a fixed distribution and its power is ``none``. ``--real`` instead starts real agents
(``edgekit_agent.Agent``) in this process, which download, verify, install and serve what they are told.

A simulated device given a ``follow`` directory also takes part in rollouts at a fraction of an agent's
cost: it subscribes to its retained ``desired`` state, pulls the named package through the real chunk
protocol (``edgekit_agent.transfer``: windowed, hash-checked, resumable), checks the whole file's sha256,
and then reports the package as its own in ``state`` and ``telemetry``. It does not verify signatures or
run the model: that is what real agents are for. With several broker URLs (a cluster's nodes) device *i*
starts at node *i mod N* and fails over to the others.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekit_agent.brokers import reread_retained
from edgekit_agent.protocol import ChunkRequest, ChunkResponse, Desired, ProtocolError, dumps, loads, parse_topic, topic
from edgekit_agent.schema import telemetry_message
from edgekit_agent.transfer import Transfer, TransferError

from edgekit.fleet import mqtt
from edgekit.fleet.serve import sha256_file

# Each simulated device is a paho client with a socket and a wake-up socket pair; paho waits on them with
# select(), which fails for descriptors above 1024: measured, the ~340th client in one process never connects.
MAX_PER_PROCESS = 250


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SimDevice:
    fleet: str
    device: str
    profile: str
    broker: str
    seed: int = 0
    follow: Path | None = None  # a work directory: download what ``desired`` names (see the module docstring)
    sent: int = 0  # telemetry messages
    package: dict[str, Any] | None = None
    installs: int = 0
    _client: Any = None
    _rng: random.Random = field(default_factory=random.Random)
    _desired: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=16))
    _stopping: threading.Event = field(default_factory=threading.Event)
    _transfer: Transfer | None = None
    _thread: threading.Thread | None = None
    _instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _connects: int = 0
    _announced: float = 0.0
    # QoS 1 publishes (telemetry, state) the broker has not acknowledged yet, by message id; see _track
    _unacked: dict[int, float] = field(default_factory=dict)
    _early: dict[int, float] = field(default_factory=dict)
    _acks: threading.Lock = field(default_factory=threading.Lock)

    def _state(self, status: str, *, connection: int | None = None) -> bytes:
        """As the agent's: ``connection`` numbers the broker connection the state speaks for."""
        return dumps({"status": status, "device": self.device, "profile": self.profile, "agent_version": "sim",
                      "package": self.package, "runtime": None, "capabilities": {"runtimes": []},
                      "simulated": True, "instance": self._instance, "time": _now(),
                      "connection": self._connects if connection is None else connection})  # fmt: skip

    def _arm_will(self, client: Any) -> None:
        will = self._state("offline", connection=self._connects + 1)
        client.will_set(topic(self.fleet, self.device, "state"), will, qos=1, retain=True)

    def start(self) -> None:
        self._rng.seed(self.seed)
        c = mqtt.client(f"sim-{self.device}")
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        self._arm_will(c)
        c.on_disconnect = lambda client, *_: self._arm_will(client)  # before connect: failover chains it
        c.on_publish = self._on_publish
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self._client = c
        if self.follow is not None:
            self._transfer = Transfer(self._request, chunk_size=16 * 1024, window=8, timeout=2.0, retries=30)
            self._thread = threading.Thread(target=self._follow, daemon=True, name=f"sim-{self.device}")
            self._thread.start()
        mqtt.connect(c, self.broker, timeout=30)

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        """Every (re)connect: the session is clean, so subscribe again and say we are online."""
        if reason.is_failure:
            return
        # QoS 0 is enough for a retained message (it comes again on every subscribe), and on NATS it
        # costs no JetStream consumer per device; own state: to hear a stale will, as the agent does
        kinds = ("state", "desired", "chunk/response") if self.follow is not None else ("state",)
        client.subscribe([(topic(self.fleet, self.device, k), 0) for k in kinds])
        self._connects += 1
        self._publish_state("online")
        if self._connects > 1:  # as the agent does: a cluster node's retained view may lag after a failover
            generation = self._connects
            reread_retained(
                client,
                [topic(self.fleet, self.device, k) for k in kinds if k != "chunk/response"],
                lambda: generation == self._connects and client.is_connected() and not self._stopping.is_set(),
            )

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    @property
    def port(self) -> int | None:
        """The broker port the client is on (or trying): which cluster node it uses."""
        return self._client.port if self._client is not None else None

    def _publish_state(self, status: str) -> Any:
        self._announced = time.monotonic() if status == "online" else self._announced
        info = self._client.publish(topic(self.fleet, self.device, "state"), self._state(status), qos=1, retain=True)
        return self._track(info)

    def _track(self, info: Any) -> Any:
        """Count a QoS 1 publish as unacknowledged until its PUBACK. By message id, not by counting callbacks:
        paho calls ``on_publish`` for a QoS 0 message once written but never for one published while the
        connection was down (it is dropped), so counting every publish against every callback left a device
        that had sent a chunk request during a failover "unacknowledged" forever (seen in a node-kill run).
        The PUBACK can be handled before ``publish`` returns here, hence ``_early``."""
        now = time.monotonic()
        with self._acks:
            if self._early.pop(info.mid, now - 10) < now - 5:  # an early ack is at most a moment old
                self._unacked[info.mid] = now
        return info

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            kind = parse_topic(msg.topic)[2]
            if kind == "desired" and msg.payload:
                with contextlib.suppress(queue.Full):
                    self._desired.put_nowait(Desired.from_json(msg.payload))
            elif kind == "state" and msg.payload:
                state = loads(msg.payload)
                stale_will = state.get("status") == "offline" and state.get("instance") == self._instance
                if stale_will and not self._stopping.is_set() and self.connected:
                    self._publish_state("online")  # see Agent._check_twin: the broker found a dead connection late
            elif kind == "chunk/response" and self._transfer is not None:
                self._transfer.deliver(ChunkResponse.from_bytes(msg.payload))
        except ProtocolError:
            pass  # a simulated device has no event channel to complain on; the real agent reports these

    def _request(self, request: ChunkRequest) -> None:
        self._client.publish(topic(self.fleet, self.device, "chunk/request"), request.to_json(), qos=0)

    def _follow(self) -> None:
        assert self.follow is not None and self._transfer is not None
        work = self.follow / self.device
        work.mkdir(parents=True, exist_ok=True)
        while not self._stopping.is_set():
            try:
                desired = self._desired.get(timeout=0.5)
            except queue.Empty:
                continue
            current = self.package or {}
            if desired.sha256 == current.get("sha256"):
                # as the agent does (Agent._reannounce): a resent desired it already runs is answered with
                # its state, which repairs a store that missed the last one
                if time.monotonic() - self._announced >= 10.0 and self.connected:
                    self._publish_state("online")
                continue
            if desired.counter < current.get("counter", -1):
                continue  # older than what runs (agents refuse lower counters too)
            part = work / f"{desired.sha256}.part"
            while not self._stopping.is_set():
                try:
                    self._transfer.fetch(desired, part, stop=self._stopping.is_set)
                except TransferError:
                    continue  # resumes from the chunks on disk
                break
            if self._stopping.is_set():
                return
            if sha256_file(part) != desired.sha256:
                part.unlink()
                part.with_suffix(".have").unlink(missing_ok=True)
                with contextlib.suppress(queue.Full):
                    self._desired.put_nowait(desired)  # fetch it again
                continue
            part.with_suffix(".have").unlink(missing_ok=True)
            part.replace(work / "current.edgepkg")
            self.package = {"name": desired.name, "version": desired.version, "counter": desired.counter,
                            "sha256": desired.sha256}  # fmt: skip
            self.installs += 1
            self._publish_state("online")

    def _on_publish(self, _c: Any, _u: Any, mid: int, *_args: Any) -> None:
        now = time.monotonic()
        with self._acks:
            if self._unacked.pop(mid, None) is None:  # QoS 0 written, or a QoS 1 acked before _track saw it
                self._early = {m: t for m, t in self._early.items() if t > now - 5} | {mid: now}

    @property
    def unacked(self) -> int:
        """QoS 1 messages (telemetry, state) the broker has not acknowledged."""
        with self._acks:
            return len(self._unacked)

    def telemetry(self, seq: int, interval: float) -> None:
        p50 = self._rng.uniform(0.8, 1.2)
        body = telemetry_message({
            "interval_s": interval, "inferences": 10, "errors": 0, "throughput_per_s": 10 / interval,
            "p50_ms": p50, "p95_ms": p50 * 1.4, "p99_ms": p50 * 1.8, "cpu_percent": 5.0, "rss_bytes": 50 << 20,
            "temperature_c": None, "power_w": None, "power_source": "none", "energy_per_inference_mj": None,
            "energy_is_estimate": True, "dropped_messages": 0,
        }) | {"package": self.package, "runtime": None, "simulated": True, "seq": seq, "time": _now()}  # fmt: skip
        self._track(self._client.publish(topic(self.fleet, self.device, "telemetry"), dumps(body), qos=1))
        self.sent += 1

    def stop(self, graceful: bool = True) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._client is None:
            return
        if graceful:
            info = self._publish_state("offline")
            with contextlib.suppress(RuntimeError, ValueError):
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
    follow: Path | None = None  # simulated devices install what they are told (see the module docstring)
    devices: list[SimDevice] = field(default_factory=list)

    def start(self) -> None:
        nodes = [u.strip() for u in self.broker.split(",") if u.strip()]
        self.devices = [
            SimDevice(self.fleet, f"{self.prefix}-{i:04d}", self.profile,
                      ",".join(nodes[i % len(nodes):] + nodes[: i % len(nodes)]), seed=i, follow=self.follow)
            for i in range(self.count)
        ]  # fmt: skip
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
            if not any(d.unacked for d in self.devices):
                return True
            time.sleep(0.05)
        return False

    @property
    def sent(self) -> int:
        return sum(d.sent for d in self.devices)

    def running(self, version: str) -> int:
        """How many devices have installed ``version``."""
        return sum(1 for d in self.devices if (d.package or {}).get("version") == version)

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
