"""Run a local Mosquitto with the settings edgekit needs (for tests, benchmarks and a one-box fleet).

``set_tcp_nodelay true``: without it every small chunk request waits on a delayed ACK (3 MB/s instead of
200+, measured in the field notes). ``max_queued_messages`` is raised so a slow subscriber (or
``edgekit serve --session`` while it restarts) does not lose QoS1 telemetry. Where Mosquitto is not
installed the embedded amqtt broker (pure Python, slower) is used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgekit.errors import EdgekitError


class BrokerFailed(EdgekitError):
    pass


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def persistence_lines(persist: Path, *, durable: bool = False) -> str:
    """Keep sessions, queued QoS1 messages and retained messages across a restart in ``persist``.

    Mosquitto writes its database on a clean stop and every second (``autosave_interval 1``): a kill -9
    loses what it acknowledged since the last save (measured, docs/reliability.md: killed right after
    acknowledging 3,000 QoS1 messages, all 3,000 lost; killed 1.5 s later, none). ``durable`` saves after
    every change instead, at ~15x fewer publishes per second; Mosquitto still acknowledges before it saves,
    so a kill -9 can lose what it acknowledged in its last moment (seen: the last 1 of 300), not more.
    """
    save = "autosave_on_changes true\nautosave_interval 1\n" if durable else "autosave_interval 1\n"
    return f"persistence true\npersistence_location {persist}/\n{save}"


def mosquitto_config(port: int, *, bind: str = "127.0.0.1", persist: Path | None = None, durable: bool = False) -> str:
    """``persist``: the directory Mosquitto keeps its state in (see :func:`persistence_lines`)."""
    keep = "persistence false\n"
    if persist:
        keep = persistence_lines(persist, durable=durable)
        if os.geteuid() == 0:  # Mosquitto started as root drops to user 'mosquitto', who cannot write here
            keep += "user root\n"
    return (
        f"listener {port} {bind}\nallow_anonymous true\nset_tcp_nodelay true\n"
        f"max_queued_messages 200000\nmax_inflight_messages 1000\n{keep}"
        "message_size_limit 0\nlog_dest none\n"
    )


class LocalBroker:
    def __init__(
        self, workdir: Path, port: int | None = None, bind: str = "127.0.0.1", persist: bool = False,
        durable: bool = False,
    ) -> None:  # fmt: skip
        self.port = port or free_port()
        self.bind = bind
        self.persist, self.durable = persist, durable
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.kind = "mosquitto" if mosquitto_path() else "amqtt"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.bind, self.port))
            except OSError:
                raise BrokerFailed(
                    f"port {self.port} on {self.bind} is already in use (another broker?); choose another --port"
                ) from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            keep = self.workdir / "data" if self.persist else None
            if keep is not None:
                keep.mkdir(exist_ok=True)
            conf.write_text(mosquitto_config(self.port, bind=self.bind, persist=keep, durable=self.durable))
            cmd = [str(mosquitto_path()), "-c", str(conf)]
        else:
            conf = self.workdir / "amqtt.yaml"
            conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: {self.bind}:{self.port}\n")
            local = Path(sys.executable).with_name("amqtt")  # the virtualenv's, whether or not it is activated
            cmd = [str(local) if local.exists() else "amqtt", "-c", str(conf)]
        try:
            # its own session: a Ctrl-C in the terminal goes to edgekit, which stops the broker after its clients
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:
            raise BrokerFailed(f"cannot start {cmd[0]}: {exc.strerror}; install mosquitto (or amqtt)") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1" if self.bind == "0.0.0.0" else self.bind, self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BrokerFailed(f"{self.kind} did not start listening on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
