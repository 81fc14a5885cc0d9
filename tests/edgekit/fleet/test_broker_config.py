"""``edgekit broker config`` against a real Mosquitto: TLS with client certificates, passwords, per-device ACLs.
Device A cannot read B's desired state or publish B's telemetry; a real agent connects with its own
credentials; a client without a certificate or with a wrong password is refused."""

from __future__ import annotations

import getpass
import json
import ssl
import subprocess
import time
import uuid

import paho.mqtt.client as paho
import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig

from edgekit.fleet.broker import free_port, mosquitto_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (the ACLs are Mosquitto's)"),
]


@pytest.fixture
def secured(tmp_path, cli):
    port = free_port()
    conf = tmp_path / "broker"
    code, out, err = cli("broker", "config", "--fleet", "lab", "--devices", "dev-a,dev-b", "--out", conf, "--port",
                         port, "--bind", "127.0.0.1", "--run-as", getpass.getuser(), "--format", "json")  # fmt: skip
    assert code == 0, err
    written = json.loads(out)
    assert (conf / "passwd").stat().st_mode & 0o777 == 0o600 and (conf / "ca.key").stat().st_mode & 0o777 == 0o600
    proc = subprocess.Popen([mosquitto_path(), "-c", written["config"]], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    creds = json.loads((conf / "credentials.json").read_text())
    yield {"port": port, "creds": creds, "conf": conf}
    proc.terminate()
    proc.wait(5)


def connect(secured, user: str, *, password: str | None = None, cert: bool = True) -> tuple[paho.Client, list]:
    info = secured["creds"]["users"][user]
    received: list = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}")
    c.username_pw_set(user, password if password is not None else info["password"])
    c.tls_set(ca_certs=secured["creds"]["ca"], certfile=info["cert"] if cert else None,
              keyfile=info["key"] if cert else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)  # fmt: skip
    c.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    result: dict = {}
    c.on_connect = lambda _c, _u, _f, rc, _p: result.setdefault("rc", rc)
    try:
        c.connect("127.0.0.1", secured["port"])
    except (ssl.SSLError, OSError) as exc:
        return None, [f"refused: {exc}"]
    c.loop_start()
    deadline = time.monotonic() + 5
    while "rc" not in result and time.monotonic() < deadline:
        time.sleep(0.02)
    if result.get("rc") is None or result["rc"].is_failure:
        c.loop_stop()
        return None, [f"refused: {result.get('rc')}"]
    return c, received


def test_a_device_reaches_only_its_own_topics(secured):
    host, _ = connect(secured, "edgekit-host")
    assert host is not None
    for device in ("dev-a", "dev-b"):
        host.publish(f"edgekit/v1/lab/{device}/desired", f"for {device}".encode(), qos=1, retain=True).wait_for_publish(
            5
        )

    a, a_got = connect(secured, "dev-a")
    assert a is not None
    a.subscribe(
        [("edgekit/v1/lab/dev-a/desired", 1), ("edgekit/v1/lab/dev-b/desired", 1), ("edgekit/v1/lab/+/desired", 1),
         ("edgekit/v1/lab/dev-b/chunk/response", 0), ("edgekit/v1/lab/dev-b/state", 0)]
    )  # fmt: skip
    watcher, seen = connect(secured, "edgekit-host")
    watcher.subscribe("edgekit/v1/lab/+/telemetry", qos=1)
    time.sleep(0.5)
    host.publish("edgekit/v1/lab/dev-b/chunk/response", b"dev-b's chunk", qos=0)
    host.publish("edgekit/v1/lab/dev-b/state", b"dev-b's state", qos=1).wait_for_publish(5)
    a.publish("edgekit/v1/lab/dev-a/telemetry", b"mine", qos=1).wait_for_publish(5)
    a.publish("edgekit/v1/lab/dev-b/telemetry", b"forged", qos=1).wait_for_publish(5)
    time.sleep(1.0)
    # positive controls first: the same connection does get its own messages through
    assert ("edgekit/v1/lab/dev-a/desired", b"for dev-a") in a_got
    assert ("edgekit/v1/lab/dev-a/telemetry", b"mine") in seen
    assert not [m for m in a_got if "dev-b" in m[0] or b"dev-b" in m[1]]  # no desired, chunk or state of dev-b
    assert ("edgekit/v1/lab/dev-b/telemetry", b"forged") not in seen
    for c in (host, a, watcher):
        c.disconnect()
        c.loop_stop()


def test_clients_without_a_certificate_or_with_a_wrong_password_are_refused(secured):
    c, why = connect(secured, "dev-a", cert=False)
    assert c is None and why[0].startswith("refused")
    c, why = connect(secured, "dev-a", password="wrong")
    assert c is None and why[0].startswith("refused")


def test_a_real_agent_connects_with_its_generated_credentials(secured, tmp_path):
    info = secured["creds"]["users"]["dev-a"]
    _, pub = pkgs.keys(tmp_path / "keys")
    host, seen = connect(secured, "edgekit-host")
    host.subscribe("edgekit/v1/lab/dev-a/state", qos=1)
    agent = Agent(AgentConfig(
        broker=f"mqtts://127.0.0.1:{secured['port']}", fleet="lab", device_id="dev-a", profile=pkgs.PROFILE,
        data_dir=tmp_path / "data", trust=[pub], ca=secured["creds"]["ca"], cert=info["cert"], key=info["key"],
        username="dev-a", password=info["password"],
    ))  # fmt: skip
    agent.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(b'"online"' in p for _, p in seen):
            time.sleep(0.1)
        assert any(b'"online"' in p for _, p in seen)
        time.sleep(0.5)
        assert agent.refused_subscriptions == 0  # its ACL lets it read everything it subscribes to
    finally:
        agent.stop()
        host.disconnect()
        host.loop_stop()
