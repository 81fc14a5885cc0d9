"""A NATS cluster on loopback that speaks MQTT: the clustered broker edgekit is tested against.

Each node runs Debian's ``nats-server`` (2.9 here) with JetStream (MQTT keeps sessions, retained messages
and QoS1 deliveries in JetStream streams), a cluster route to every other node and an MQTT listener.
Devices keep using paho against any node's MQTT port; ``edgekit serve`` workers may use the native NATS
port and queue groups instead (``edgekit serve --nats``).

``mqtt.stream_replicas`` is the cluster size, so the retained ``desired`` state and persistent sessions
survive the loss of a node. NATS 2.9 refuses MQTT topics containing ``.`` (2.10 maps it to ``//``):
fleet and device names must not contain one on such a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt
from edgekit.fleet.broker import free_port


class ClusterFailed(EdgekitError):
    pass


def nats_server_path() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """Where clients reach it: a wildcard listen address is reached on loopback from this machine."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.address}:{self.mqtt_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.address}:{self.client_port}"


def node_config(node: Node, nodes: list[Node], store: Path, replicas: int) -> str:
    routes = ", ".join(f'"nats-route://{n.address}:{n.cluster_port}"' for n in nodes if n is not node)
    cluster = (
        f"""cluster {{
  name: edgekit
  listen: {node.host}:{node.cluster_port}
  routes: [{routes}]
}}
"""
        if len(nodes) > 1
        else ""
    )  # one node: plain JetStream, no Raft group to wait for
    return f"""server_name: {node.name}
listen: {node.host}:{node.client_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
{cluster}mqtt {{
  listen: {node.host}:{node.mqtt_port}
  stream_replicas: {replicas}
}}
"""


def last_error(log: Path) -> str:
    """The last [ERR]/[FTL] line of a node's log, without the timestamp: why it would not start."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "[FTL]" in line or "[ERR]" in line:
            return line.split("] ", 2)[-1].strip()
    return lines[-1].strip() if lines else "empty log"


@dataclass
class NatsCluster:
    """``size`` nodes in ``workdir`` (configs, JetStream stores, logs); ``start`` returns when MQTT works."""

    workdir: Path
    size: int = 3
    replicas: int | None = None  # of MQTT's JetStream streams; default: one per node
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if not self.nodes:
            self.nodes = [Node(f"n{i}", free_port(), free_port(), free_port()) for i in range(self.size)]

    @property
    def mqtt_urls(self) -> list[str]:
        return [n.mqtt_url for n in self.nodes]

    @property
    def nats_urls(self) -> list[str]:
        return [n.nats_url for n in self.nodes]

    def start(self, timeout: float = 60.0, *, attempts: int = 2) -> None:
        """Start every node and wait until each acknowledges an MQTT QoS1 publish.

        A fresh cluster sometimes fails to place its MQTT streams while its peers are still joining
        ("no suitable peers for placement") and never recovers; the whole cluster is then started again
        on empty JetStream stores, at most ``attempts`` times in all, each bounded by ``timeout``.
        """
        binary = nats_server_path()
        if binary is None:
            raise ClusterFailed("nats-server is not installed; install it (Debian: apt install nats-server)")
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                self.start_node(node, binary)
            deadline = time.monotonic() + timeout
            try:
                for node in self.nodes:
                    self._wait_mqtt(node, deadline)
                return
            except ClusterFailed:
                if attempt == attempts:
                    raise
                for node in self.nodes:  # _wait_mqtt stopped the cluster; start over on empty stores
                    shutil.rmtree(self.workdir / node.name / "js", ignore_errors=True)

    def start_node(self, node: Node, binary: str | None = None) -> None:
        home = self.workdir / node.name
        (home / "js").mkdir(parents=True, exist_ok=True)
        conf = home / "nats.conf"
        conf.write_text(node_config(node, self.nodes, home / "js", self.replicas or len(self.nodes)))
        log = open(home / "nats.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            node.proc = subprocess.Popen([binary or nats_server_path() or "nats-server", "-c", str(conf)],
                                         stdout=log, stderr=log, start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise ClusterFailed(f"cannot start nats-server: {exc.strerror}") from None
        finally:
            log.close()

    def _wait_mqtt(self, node: Node, deadline: float) -> None:
        """Listening is not enough: MQTT acknowledges a QoS1 publish only once JetStream has a meta leader."""
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                self.stop()
                raise ClusterFailed(
                    f"nats-server {node.name} exited: {last_error(self.workdir / node.name / 'nats.log')}"
                )
            c = mqtt.client(f"probe-{node.name}")
            try:
                mqtt.connect(c, node.mqtt_url, timeout=5)
            except mqtt.BrokerUnreachable:
                time.sleep(0.2)
                continue
            info = c.publish("edgekit/probe", b"", qos=1)
            info.wait_for_publish(timeout=5)
            ok = info.is_published()
            c.disconnect()
            c.loop_stop()
            if ok:
                return
            time.sleep(0.2)
        self.stop()
        raise ClusterFailed(
            f"nats-server {node.name} did not accept MQTT in time (last log line: "
            f"{last_error(self.workdir / node.name / 'nats.log')})"
        )

    def kill(self, index: int) -> Node:
        """kill -9 one node: what a crashed machine looks like to the others."""
        node = self.nodes[index]
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)
            node.proc = None
        return node

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
                node.proc = None
