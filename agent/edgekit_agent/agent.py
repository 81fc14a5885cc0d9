"""The running agent: paho-mqtt in, a few worker threads, the updater, inference and telemetry.

Threads and why: paho's network loop only parses and enqueues (callbacks never block); ``control`` applies
desired packages (downloads may take minutes, inference keeps serving meanwhile); ``infer`` answers
requests; ``telemetry`` snapshots every interval; ``sender`` drains the on-disk outbox in order whenever
the broker is reachable. Queues are bounded; what overflows is dropped and counted, never blocks paho.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekit_agent import __version__, power
from edgekit_agent.bench import Bench
from edgekit_agent.brokers import (
    BrokerListError,
    Credentials,
    Endpoint,
    Failover,
    new_client,
    parse_brokers,
    reread_retained,
    secure,
)
from edgekit_agent.generate import GenerateService
from edgekit_agent.generate import Limits as GenerateLimits
from edgekit_agent.inference import handle
from edgekit_agent.outbox import Outbox
from edgekit_agent.protocol import (
    BenchRequest,
    ChunkRequest,
    ChunkResponse,
    Desired,
    ProtocolError,
    dumps,
    loads,
    parse_topic,
    topic,
)
from edgekit_agent.store import Store
from edgekit_agent.telemetry import Telemetry
from edgekit_agent.transfer import Transfer
from edgekit_agent.trust import TrustStore
from edgekit_agent.updater import Updater

log = logging.getLogger("edgekit_agent")


class ConfigError(ValueError):
    """An agent setting that cannot work; the message names the setting and the fix."""


@dataclass
class AgentConfig:
    broker: str
    fleet: str
    device_id: str
    profile: str
    data_dir: Path
    trust: list[Path]
    revoked: list[str] = field(default_factory=list)
    threads: int = 1
    chunk_size: int = 256 * 1024
    # measured (docs/benchmarks.md, TCP_NODELAY on): 8-64 requests in flight reach 61-71 % of a raw publish loop
    window: int = 32
    chunk_timeout: float = 5.0
    chunk_retries: int = 5
    telemetry_interval: float = 10.0
    retry_interval: float = 30.0
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    power_model: tuple[float, float] | None = None
    outbox_limit: int = 10_000
    bench_space_mb: float = 1024.0  # DATA/candidates: packages benched for the host, never installed
    # runs under an emulator (qemu-user in make test-arm64): said in state, telemetry and bench answers, so an
    # emulated latency is never taken for a device's
    emulated: bool = False
    generate_limits: GenerateLimits = field(default_factory=GenerateLimits)

    def __post_init__(self) -> None:
        if not self.bench_space_mb > 0:
            raise ConfigError(f"--bench-space-mb {self.bench_space_mb} must be above 0")

    def endpoints(self) -> list[Endpoint]:
        try:
            return parse_brokers(self.broker, tls=self.ca is not None)
        except BrokerListError as exc:
            raise ConfigError(str(exc)) from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        self.failover = Failover(config.endpoints())
        self.tls = self.failover.current.tls
        self.store = Store(config.data_dir)
        self.outbox = Outbox(self.store.outbox, limit=config.outbox_limit)
        self.trust = TrustStore.load(config.trust, revoked=config.revoked)
        self.stopping = threading.Event()
        self.connected = threading.Event()
        # this process: in the client id and the state, so a second agent with the same device id is seen
        self.instance = uuid.uuid4().hex[:8]
        self.twins: set[str] = set()  # other instances seen online under this device id (reported once each)
        self.connects = 0
        self._announced = 0.0  # monotonic time of the last re-announcement (_reannounce)
        self.refused_subscriptions = 0
        self._subscribe_tries = 0
        self.ready = threading.Event()  # recovery done, the installed model (if any) is serving
        # the installed model has been loaded (or found missing): only then does "online" say what runs
        self.loaded = threading.Event()
        self.telemetry = Telemetry(power.detect(power_model=config.power_model))
        self.transfer = Transfer(
            self._request_chunk,
            chunk_size=config.chunk_size,
            window=config.window,
            timeout=config.chunk_timeout,
            retries=config.chunk_retries,
        )
        self.model: Any = None
        self.updater = Updater(
            self.store,
            trust=self.trust,
            profile=config.profile,
            transfer=self.transfer,
            threads=config.threads,
            event=self.event,
            on_serving=self._serving,
            stop=self.stopping.is_set,
        )
        # a bench downloads through its own transfer: the updater's may be fetching an install meanwhile
        self.bench_transfer = Transfer(self._request_chunk, chunk_size=config.chunk_size, window=config.window,
                                       timeout=config.chunk_timeout, retries=config.chunk_retries)  # fmt: skip
        self.bench = Bench(
            root=self.store.root / "candidates", trust=self.trust, profile=config.profile,
            transfer=self.bench_transfer, threads=config.threads, telemetry=self.telemetry,
            trusted_now=self.updater.trusted_time, limit_bytes=int(config.bench_space_mb * 2**20),
            reply=lambda answer: self.outbox.put(self._topic("bench/response"), dumps(answer)),
            serving=lambda: self.model, power_model=config.power_model, stop=self.stopping.is_set,
            labels={"emulated": True} if config.emulated else {},
        )  # fmt: skip
        self.control: queue.Queue[Desired | None] = queue.Queue(maxsize=8)
        self.infer_q: queue.Queue[bytes] = queue.Queue(maxsize=64)
        self.generate = GenerateService(
            lambda: self.model,
            lambda answer: self.client.publish(self._topic("generate/response"), dumps(answer), qos=1),
            self.telemetry.record_generation, limits=config.generate_limits, loading=lambda: not self.loaded.is_set(),
        )  # fmt: skip
        self.client = self._client()
        self.threads: list[threading.Thread] = []

    # -- MQTT --------------------------------------------------------------------------------------------
    def _topic(self, kind: str) -> str:
        return topic(self.cfg.fleet, self.cfg.device_id, kind)

    def _client(self) -> Any:
        cfg = self.cfg
        client = new_client(f"edgekit-agent-{cfg.device_id}-{self.instance}")
        secure(client, Credentials(cfg.username, cfg.password, self.tls, *(str(p) if p else None for p in
                                                                         (cfg.ca, cfg.cert, cfg.key))))  # fmt: skip
        self._arm_will(client)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = lambda c, _u: None if self.stopping.is_set() else self.failover.next(c)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _state(self, status: str, *, connection: int | None = None) -> bytes:
        """``connection``: which broker connection of this process the message speaks for (default: the
        current one); the store ignores a state from an older connection than the one it holds."""
        model = self.model
        return dumps({
            "status": status,
            "connection": self.connects if connection is None else connection,
            "device": self.cfg.device_id,
            "profile": self.cfg.profile,
            "agent_version": __version__,
            "package": model.manifest.summary() if model else None,
            "runtime": f"{model.engine}:{model.device}" if model else None,
            "capabilities": capabilities(emulated=self.cfg.emulated),
            "instance": self.instance,
            "time": _now(),
        })  # fmt: skip

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        self._subscribe_tries = 0
        self._subscribe(client)
        if self.connects > 1:  # a reconnect, perhaps to another cluster node whose retained view lags
            generation = self.connects
            reread_retained(
                client,
                [self._topic("desired"), self._topic("state")],
                lambda: generation == self.connects and client.is_connected() and not self.stopping.is_set(),
            )
        # set before the check, as _serving sets ``loaded`` before checking ``connected``: whichever runs
        # second publishes, so the state is never skipped by both
        self.connected.set()
        if self.loaded.is_set():
            self._online(client)

    # QoS 0 where it loses nothing: ``desired`` is retained (every subscribe delivers it again) and chunk
    # responses are sent at QoS 0 anyway. On a NATS cluster each QoS 1 subscription is a replicated
    # JetStream consumer, whose creation can time out while a node is lost (tests/edgekit/fleet/test_cluster.py).
    # Its own ``state`` too: another agent started with the same device id shows up there (_check_twin).
    # ``bench/request`` at QoS 0 too: a bench lost while the agent reconnects is named by the host's timeout,
    # and a consumer per device for a rare request would cost the cluster what the comment above says
    SUBSCRIPTIONS = (
        ("desired", 0),
        ("chunk/response", 0),
        ("infer/request", 1),
        ("state", 0),
        ("bench/request", 0),
        ("generate/request", 1),
    )
    SUBSCRIBE_RETRIES = 5

    def _subscribe(self, client: Any) -> None:
        client.subscribe([(self._topic(kind), qos) for kind, qos in self.SUBSCRIPTIONS])

    def _on_subscribe(self, client: Any, _userdata: Any, _mid: Any, reason_codes: Any, _props: Any) -> None:
        """A refused subscription (SUBACK 0x80: the broker could not set it up, e.g. a NATS node during an
        election) is asked for again after 1-3 s, at most ``SUBSCRIBE_RETRIES`` times per connection:
        without it the device would miss its desired state until the next reconnect. One that stays refused
        is an ACL that forbids it: reported, not retried forever."""
        if not any(getattr(rc, "is_failure", False) for rc in reason_codes) or self.stopping.is_set():
            return
        self.refused_subscriptions += 1
        if self._subscribe_tries >= self.SUBSCRIBE_RETRIES:
            self.event(
                "error",
                {
                    "reason": "the broker keeps refusing a subscription of this device; check that "
                    "its ACL lets it read its own desired, chunk/response, infer/request and state"
                },
            )
            return
        self._subscribe_tries += 1
        retry = threading.Timer(random.uniform(1.0, 3.0), lambda: client.is_connected() and self._subscribe(client))
        retry.daemon = True
        retry.start()

    def _arm_will(self, client: Any) -> None:
        """The last will of the next connection, numbered as that connection (paho sends it at every connect)."""
        client.will_set(self._topic("state"), self._state("offline", connection=self.connects + 1), qos=1, retain=True)

    def _on_disconnect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        self._arm_will(client)
        # paho doubles the delay up to max_delay; a random start spreads a fleet's reconnects after an outage.
        client.reconnect_delay_set(min_delay=random.uniform(0.5, 2.0), max_delay=60)
        if not self.stopping.is_set():
            self.failover.next(client, reason)  # a cluster: the next node

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        """Parse and enqueue only: never block the network loop."""
        try:
            kind = parse_topic(msg.topic)[2]
            if kind == "desired":
                if not msg.payload:
                    return  # a cleared retained message
                desired = Desired.from_json(msg.payload)
                with contextlib.suppress(queue.Full):
                    self.control.put_nowait(desired)
            elif kind == "chunk/response":
                response = ChunkResponse.from_bytes(msg.payload)
                self.transfer.deliver(response)  # each transfer ignores responses to requests it did not make
                self.bench_transfer.deliver(response)
            elif kind == "bench/request":
                try:
                    self.bench.submit(BenchRequest.from_json(msg.payload))
                except ProtocolError as exc:  # answered, not only an event: the host waits for it
                    self.outbox.put(self._topic("bench/response"), dumps({"id": _bench_id(msg.payload),
                                    "status": "refused", "reason": f"malformed bench request: {exc}"}))  # fmt: skip
                    raise
            elif kind == "infer/request":
                try:
                    self.infer_q.put_nowait(msg.payload)
                except queue.Full:
                    self._reply({"id": None, "error": "busy: the inference queue is full, retry later"})
            elif kind == "generate/request":
                self.generate.submit(msg.payload)  # parses and queues; answers errors itself
            elif kind == "state" and msg.payload:
                self._check_twin(loads(msg.payload), retained=bool(msg.retain))
        except ProtocolError as exc:
            self.event("error", {"reason": f"malformed message on {msg.topic}: {exc}"})

    def _check_twin(self, state: dict[str, Any], *, retained: bool) -> None:
        """Two agents with one device id would fight over its desired state, downloads and telemetry. Each
        hears the other's live "online" (a retained one may be the will-less leftover of this device's own
        previous, killed run, so it is not evidence) and reports it once; the first to notice re-announces
        itself so the other notices too. Client ids differ, so neither is disconnected: no reconnect loop."""
        other = state.get("instance")
        if state.get("status") == "offline" and other == self.instance:
            # this agent's own will, from a connection the broker found dead only after the agent had
            # reconnected (to another cluster node, or after a keepalive timeout): the fleet would show a
            # running device as offline until its next reconnect, so say "online" again
            if self.connected.is_set() and not self.stopping.is_set():
                self._online(self.client)
            return
        if retained or state.get("status") != "online" or not isinstance(other, str) or other == self.instance:
            return
        if other in self.twins:
            return
        self.twins.add(other)
        reason = (f"another agent is online with device id {self.cfg.device_id!r} (instance {other}, this is "
                  f"{self.instance}); give every device its own --device-id and stop the other one")  # fmt: skip
        log.error("%s", reason)
        self.event("conflict", {"reason": reason, "other_instance": other, "instance": self.instance})
        if self.connected.is_set():
            self._online(self.client)

    def _request_chunk(self, request: ChunkRequest) -> None:
        self.client.publish(self._topic("chunk/request"), request.to_json(), qos=0)

    def _reply(self, response: dict[str, Any]) -> None:
        self.client.publish(self._topic("infer/response"), dumps(response), qos=1)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Events go through the outbox: in order, kept on disk while the broker is away."""
        self.outbox.put(self._topic("events"), dumps({"kind": kind, "device": self.cfg.device_id, "time": _now(),
                                                      **data}))  # fmt: skip

    def _serving(self, model: Any) -> None:
        """The model now serving (None: nothing installed). "online" is announced only from here, once the
        installed model is loaded: before, the fleet would see a device that runs nothing."""
        self.model = model
        self.loaded.set()
        if self.connected.is_set():
            self._online(self.client)

    # -- threads -----------------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        self.updater.recover()
        self.ready.set()
        last: Desired | None = None
        while not self.stopping.is_set():
            try:
                item = self.control.get(timeout=self.cfg.retry_interval)
                if item is None:
                    break  # stop() woke us: do not sit out the retry interval
                last = item
            except queue.Empty:
                failed = self.updater.state.get("failed") or {}
                if last is None or not failed.get("retryable") or failed.get("sha256") != last.sha256:
                    continue  # nothing to retry
            if self.updater.converged(last):
                self._reannounce()
                continue
            self.updater.apply(last)

    # no re-announcement within this many seconds of the last online state: retained re-deliveries come in
    # bursts after a (re)connect, and the reconciler's resends are further apart (its grace, then backoff)
    REANNOUNCE_S = 10.0

    def _reannounce(self) -> None:
        """A desired package this device already runs: say so again. The host resends a desired state when
        its store disagrees with the device (edgekit.fleet.reconcile); when the store only missed the
        device's state message (a cluster node lost it, a consumer was re-elected), the device is right and
        the store wrong, and only a new state message repairs that. Harmless otherwise: a retained state
        replaced by the same facts."""
        now = time.monotonic()
        if not self.loaded.is_set() or not self.connected.is_set() or now - self._announced < self.REANNOUNCE_S:
            return
        self._online(self.client)

    def _online(self, client: Any) -> None:
        """The retained ``online`` state of the current connection (what runs, what this device can do)."""
        self._announced = time.monotonic()
        client.publish(self._topic("state"), self._state("online"), qos=1, retain=True)

    def _infer_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                payload = self.infer_q.get(timeout=0.5)
            except queue.Empty:
                continue
            model = self.model
            _, response = handle(payload, model, self.telemetry.record, loading=not self.loaded.is_set())
            self._reply(response)

    def _telemetry_loop(self) -> None:
        while not self.stopping.wait(self.cfg.telemetry_interval):
            self.telemetry.dropped_messages = self.outbox.dropped
            snap = self.telemetry.snapshot()
            model = self.model
            snap |= {"device": self.cfg.device_id, "time": _now(),
                     "package": model.manifest.summary() if model else None,
                     "runtime": f"{model.engine}:{model.device}" if model else None}  # fmt: skip
            if self.cfg.emulated:
                snap["emulated"] = True
            self.outbox.put(self._topic("telemetry"), dumps(snap))

    def _sender_loop(self) -> None:
        while not self.stopping.is_set():
            if not self.connected.wait(0.5):
                continue
            item = self.outbox.peek(0.5)
            if item is None:
                continue
            path, name, payload = item
            info = self.client.publish(name, payload, qos=1)
            if _acknowledged(info, timeout=10):
                self.outbox.done(path)
            else:
                self.stopping.wait(0.5)  # a lost connection: do not pile copies into paho's queue

    def start(self) -> None:
        first = self.failover.current
        self.client.connect_async(first.host, first.port, keepalive=30)
        self.client.loop_start()
        for name, target in (("control", self._control_loop), ("infer", self._infer_loop),
                             ("telemetry", self._telemetry_loop), ("sender", self._sender_loop),
                             ("generate", lambda: self.generate.run(self.stopping))):  # fmt: skip
            thread = threading.Thread(target=target, name=f"edgekit-agent-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with contextlib.suppress(queue.Full):
            self.control.put_nowait(None)
        if self.connected.is_set():
            info = self.client.publish(self._topic("state"), self._state("offline"), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _bench_id(payload: bytes) -> str | None:
    """The id of a bench request that failed validation, when it has a usable one (the host matches by it)."""
    try:
        value = loads(payload, max_bytes=4096).get("id")
    except ProtocolError:
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def _acknowledged(info: Any, timeout: float) -> bool:
    """Whether the broker acknowledged a QoS 1 publish within ``timeout`` (in the caller's thread, never in a
    paho callback). A publish that raced a disconnect reports an error instead of raising: it must not end
    the sender thread (it did, and telemetry then piled up in the outbox until the agent restarted); the
    message stays in the outbox and is sent again, and the store drops the duplicate if paho re-sent it too."""
    try:
        info.wait_for_publish(timeout=timeout)
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def capabilities(*, emulated: bool = False) -> dict[str, Any]:
    """Which runtimes are installed (found without importing them: OpenVINO alone costs ~80 MB of RSS), the
    machine architecture, and whether this runs emulated."""
    import platform

    from edgekit_agent.runtimes import installed

    return {"runtimes": installed(), "arch": platform.machine()} | ({"emulated": True} if emulated else {})
