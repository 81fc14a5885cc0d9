"""The agent against a real Mosquitto: serve → desired → download → verify → install → infer → telemetry,
and every way an update can go wrong leaving the previous model serving."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from edgekit_agent.inference import encode
from edgekit_agent.protocol import Desired
from fleet import Host

from edgekit.fleet.serve import PackageServer, sha256_file

pytestmark = pytest.mark.integration
X = np.linspace(0, 1, 16, dtype=np.float32)[None]


def expected(scale: float) -> np.ndarray:
    return X @ (np.arange(256, dtype=np.float32).reshape(16, 16) / 256 * np.float32(scale)) + 1


@pytest.fixture
def world(tmp_path, broker):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    server = PackageServer(repo, broker.url)
    server.start()
    host = Host(broker.url)
    agents: list[Agent] = []

    def package(
        name: str, *, counter: int, scale: float = 1.0, key: Path | None = None, claim: int | None = None, **src
    ) -> Desired:
        """Build and publish-ready a package; ``claim`` is a different counter for the desired message."""
        edit = src.pop("edit", None)
        source = pkgs.source_dir(tmp_path / f"src-{name}", scale=scale, **src)
        if edit:
            edit(source)
        path = pkgs.build(source, repo / f"{name}.edgepkg", key or keys[0], counter=counter, version=name)
        return Desired("tiny", name, sha256_file(path), claim or counter, path.stat().st_size)

    def agent(**overrides) -> Agent:
        cfg = AgentConfig(
            broker=broker.url, fleet="lab", device_id="dev-1", profile=pkgs.PROFILE, data_dir=tmp_path / "data",
            trust=[keys[1]], telemetry_interval=0.5, chunk_size=1024, chunk_timeout=1.0, retry_interval=2.0,
        )  # fmt: skip
        for k, v in overrides.items():
            setattr(cfg, k, v)
        a = Agent(cfg)
        a.start()
        agents.append(a)
        return a

    yield {"host": host, "package": package, "agent": agent, "agents": agents, "server": server, "keys": keys,
           "tmp": tmp_path, "broker": broker}  # fmt: skip
    for a in agents:
        a.stop()
    server.stop()
    host.close()


def serving(host: Host, version: str) -> dict:
    return host.wait_for(
        lambda: next((s for s in reversed(host.messages["state"]) if isinstance(s, dict) and s["status"] == "online"
                      and (s.get("package") or {}).get("version") == version), None),
        f"state online with {version}",
    )  # fmt: skip


def answer(host: Host, scale: float) -> None:
    response = host.infer({"x": encode(X)})
    assert "error" not in response, response
    out = response["outputs"]["y"]
    got = np.frombuffer(__import__("base64").b64decode(out["b64"]), dtype=out["dtype"]).reshape(out["shape"])
    np.testing.assert_allclose(got, expected(scale), rtol=1e-5)


def test_full_cycle_serve_desired_download_verify_install_infer_telemetry(world):
    host = world["host"]
    v1 = world["package"]("v1", counter=7)
    world["agent"]()
    host.desire(v1)
    state = serving(host, "v1")
    assert state["runtime"] == "onnxruntime:CPUExecutionProvider" and "onnxruntime" in state["capabilities"]["runtimes"]
    answer(host, 1.0)
    # events travel through the outbox, the state message does not: wait for the last step rather than race it
    host.event_matching("update", '"committed"')
    steps = [e["state"] for e in host.events("update")]
    assert steps[-5:] == ["downloading", "verifying", "installing", "smoke_testing", "committed"]
    download = host.event_matching("download", "chunks")
    assert download["chunks"] == -(-v1.size // 1024) and download["resumed_chunks"] == 0
    telemetry = host.wait_for(lambda: [t for t in host.messages["telemetry"] if t["inferences"] >= 1], "telemetry")[0]
    assert telemetry["latency_ms"]["p50"] > 0 and telemetry["power"]["source"] in {"estimate", "none", "rapl", "hwmon"}
    assert telemetry["rss_bytes"] > 10 << 20 and telemetry["package"]["version"] == "v1"
    # the same desired again (retained re-delivery, a duplicate) changes nothing
    before = len(host.events("update"))
    host.desire(v1)
    answer(host, 1.0)
    assert len(host.events("update")) == before


def test_a_desired_package_it_already_runs_is_answered_with_its_state_not_reinstalled(world):
    """The reconciler resends desired when the store disagrees with a device; when the store merely missed the
    device's state (a cluster node lost it), only a new state message repairs it: the device re-announces,
    at most once per REANNOUNCE_S, and installs nothing."""
    host = world["host"]
    v1 = world["package"]("v1", counter=7)
    agent = world["agent"]()
    agent.REANNOUNCE_S = 1.0
    host.desire(v1)
    serving(host, "v1")
    host.event_matching("update", '"committed"')
    updates = len(host.events("update"))

    def online() -> int:
        return len([s for s in host.messages["state"] if isinstance(s, dict) and s["status"] == "online"])

    time.sleep(1.2)
    before = online()
    host.desire(v1)  # what the reconciler does
    host.wait_for(lambda: online() > before, "the state announced again")
    again = host.messages["state"][-1]
    assert again["package"]["version"] == "v1" and again["connection"] == agent.connects
    host.desire(v1)  # within REANNOUNCE_S: no second announcement
    time.sleep(0.5)
    assert online() == before + 1 and len(host.events("update")) == updates


def install_v1(world) -> Host:
    host = world["host"]
    world["agent"]()
    host.desire(world["package"]("v1", counter=7))
    serving(host, "v1")
    return host


def test_refused_packages_leave_the_old_model_serving(world):
    host = install_v1(world)
    other_key, _ = pkgs.keys(world["tmp"] / "keys", name="intruder")
    cases = [
        ("untrusted-key", world["package"]("evil", counter=8, key=other_key)),
        ("wrong-profile", world["package"]("rpi", counter=9, profile="rpi4")),
        ("replayed-counter", world["package"]("old", counter=5, claim=10)),  # desired lies about the counter
    ]
    for reason, desired in cases:
        host.desire(desired)
        event = host.event_matching("rollback", reason)
        assert event["serving"]["version"] == "v1"
        answer(host, 1.0)
    assert json.loads((world["tmp"] / "data" / "state.json").read_text())["installed"]["version"] == "v1"


def test_smoke_test_failure_rolls_back(world):
    host = install_v1(world)
    host.desire(world["package"]("wrong", counter=8, expected_offset=5.0))
    event = host.event_matching("rollback", "smoke test failed")
    assert "differs from the sample" in event["reason"]
    answer(host, 1.0)
    versions = sorted(p.name for p in (world["tmp"] / "data" / "versions").iterdir())
    assert len(versions) == 1 and versions[0].startswith("tiny-7-")  # the candidate was removed


def test_a_newer_package_replaces_the_old_one(world):
    host = install_v1(world)
    host.desire(world["package"]("v2", counter=8, scale=2.0))
    serving(host, "v2")
    answer(host, 2.0)


class CorruptOnce(PackageServer):
    """Sends chunk 2 once with flipped bytes (its hash still that of the good bytes), like a bad link would."""

    corrupted = 0

    def __post_init__(self):
        super().__post_init__()
        self.asked = []

    def answer(self, request):
        self.asked.append(request.offset)
        response = super().answer(request)
        if request.offset == 2048 and not self.corrupted:
            self.corrupted += 1
            data = bytes(b ^ 0xFF for b in response.data)
            return type(response)(response.request_id, response.sha256, response.offset, data, response.chunk_sha256)
        return response


def test_a_corrupt_chunk_is_requested_again(world):
    world["server"].stop()
    server = CorruptOnce(world["tmp"] / "repo", world["broker"].url)
    server.start()
    try:
        host = install_v1(world)
        assert server.corrupted == 1
        assert server.asked.count(2048) == 2  # the corrupt chunk, and only it, was requested again
        downloads = host.events("download")
        assert [d["corrupt"] for d in downloads] == [0, 1] and downloads[1]["chunks"] == 1
        assert all(e["state"] != "rolled_back" for e in host.events("update"))
        answer(host, 1.0)
    finally:
        server.stop()


def test_npu_requested_without_one_falls_back_to_cpu(world):
    import openvino as ov

    def to_openvino_npu(source: Path) -> None:
        ov.save_model(ov.convert_model(str(source / "model.onnx")), str(source / "model.xml"), compress_to_fp16=False)
        (source / "model.onnx").unlink()
        report = json.loads((source / "report.json").read_text())
        report["runtime"] = "openvino:NPU"
        report["package"]["model"] = {"format": "openvino-ir", "entry": "model.xml"}
        report["package"]["files"] = sorted(["model.bin", "model.xml", "sample/input_0.npy", "sample/output_0.npy"])
        (source / "report.json").write_text(json.dumps(report))

    host = world["host"]
    world["agent"]()
    host.desire(world["package"]("npu", counter=7, edit=to_openvino_npu))
    state = serving(host, "npu")
    assert state["runtime"] == "openvino:CPU"
    event = host.event_matching("fallback", "NPU")
    assert event["from"] == "openvino:NPU" and event["to"] == "openvino:CPU"
    answer(host, 1.0)


def nodelay(client) -> int:
    return client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_broker_restart_reconnects_and_resubscribes(world):
    host = world["host"]
    agent = world["agent"]()
    host.desire(world["package"]("v1", counter=7))
    serving(host, "v1")
    # Nagle off on every connection (a chunk request otherwise waited ~40 ms on a delayed ACK)
    assert nodelay(agent.client) and nodelay(world["server"].transport.client)
    online = len([s for s in host.messages["state"] if s["status"] == "online"])
    world["broker"].stop()
    world["broker"].start()  # same port, no persistence: the retained desired is gone
    host.wait_for(lambda: len([s for s in host.messages["state"] if s["status"] == "online"]) > online,
                  "the agent announcing itself again", timeout=60)  # fmt: skip
    host.desire(world["package"]("v2", counter=8, scale=2.0))
    serving(host, "v2")
    answer(host, 2.0)
    assert nodelay(agent.client)  # the new socket too


def test_malformed_payloads_on_every_subscribed_topic_are_answered_not_fatal(world):
    host = install_v1(world)
    for kind in ("desired", "chunk/response"):
        for payload in (b"garbage", b"\xff\xfe", b'{"name": 1}', b"[]", b"\x00\x00\x00\x05{}"):
            host.publish(kind, payload)
        host.event_matching("error", f"malformed message on edgekit/v1/lab/dev-1/{kind}")
    host.publish("infer/request", b"garbage")
    host.wait_for(lambda: any(r.get("error", "").startswith("bad request") for r in host.messages["infer/response"]
                              if isinstance(r, dict)), "an error answer")  # fmt: skip
    bad_shape = host.infer({"x": {"shape": [3], "dtype": "float32", "b64": "AAAA"}})
    assert "bad request" in bad_shape["error"]
    wrong_rank = host.infer({"x": encode(np.zeros((2, 3), np.float32))})
    assert wrong_rank["error"].startswith("inference failed")
    host.desire(Desired("tiny", "v1", "0" * 64, 3, 10))  # stale: counter below the installed one
    host.event_matching("ignored", "stale")
    answer(host, 1.0)


class Recording(PackageServer):
    """Counts the chunk offsets devices ask for; with ``upto`` it answers only chunks below that offset."""

    def __init__(self, *args, upto: int | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.upto, self.offsets = upto, []

    def answer(self, request):
        self.offsets.append(request.offset)
        if self.upto is not None and request.offset >= self.upto:
            return None  # a server that stalls halfway
        return super().answer(request)


def test_kill_9_during_download_resumes_without_fetching_held_chunks(world):
    import os
    import signal
    import subprocess
    import sys

    world["server"].stop()
    desired = world["package"]("big", counter=7, extra={"pad.bin": os.urandom(40_000)})
    half = (desired.size // 2) // 1024 * 1024
    stalling = Recording(world["tmp"] / "repo", world["broker"].url, upto=half)
    stalling.start()
    data = world["tmp"] / "data"
    cmd = [sys.executable, "-m", "edgekit_agent.cli", "run", "--broker", world["broker"].url, "--fleet", "lab",
           "--device-id", "dev-1", "--profile", pkgs.PROFILE, "--data-dir", str(data), "--trust", str(world["keys"][1]),
           "--chunk-size", "1024"]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    host = world["host"]
    host.desire(desired)
    have = data / "downloads" / f"{desired.sha256}.have"
    held = half // 1024
    host.wait_for(lambda: have.exists() and len(have.read_text().splitlines()) >= held, "half the chunks on disk")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    stalling.stop()
    assert json.loads((data / "state.json").read_text())["state"] == "downloading"
    full = Recording(world["tmp"] / "repo", world["broker"].url)
    full.start()
    second = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        serving(host, "big")
        answer(host, 1.0)
        assert full.offsets, "the second run fetched nothing"
        assert min(full.offsets) >= half, "chunks held before the kill were fetched again"
        assert len(set(full.offsets)) == -(-desired.size // 1024) - held
        resumed = host.event_matching("download", '"resumed_chunks": ')
        assert resumed["resumed_chunks"] == held
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
        full.stop()


def test_with_two_brokers_the_agent_fails_over_when_its_broker_dies(world, tmp_path):
    from edgekit.fleet.broker import LocalBroker

    first = LocalBroker(tmp_path / "first")
    first.start()
    try:
        # the package server and host stay on the fixture's broker (the second in the agent's list)
        agent = world["agent"](broker=f"{first.url},{world['broker'].url}")
        world["host"].wait_for(lambda: agent.connected.is_set() or None, "connected to the first broker")
        assert agent.failover.current.port == first.port
        first.stop()  # its node dies: the agent moves to the next URL instead of waiting for it
        world["host"].wait_for(lambda: agent.connected.is_set() and agent.failover.index == 1, "moved to the second",
                               timeout=60)  # fmt: skip
        world["host"].desire(world["package"]("v1", counter=7))
        serving(world["host"], "v1")
        answer(world["host"], 1.0)
        assert nodelay(agent.client)
    finally:
        first.stop()


def test_a_publish_that_raced_a_disconnect_counts_as_not_acknowledged_instead_of_ending_the_sender():
    import paho.mqtt.client as paho
    from edgekit_agent.agent import _acknowledged

    info = paho.MQTTMessageInfo(1)
    info.rc = paho.MQTTErrorCode.MQTT_ERR_NO_CONN  # what publish() returns while paho is reconnecting
    assert _acknowledged(info, timeout=0.1) is False


def test_the_bad_package_catalogue_against_the_running_agent_over_mqtt(world):
    """Issue 8: each bad package reaches the agent the way a real one does (desired + chunks through the
    broker); each must be refused with a reason, reported as a rollback event, and v1 must keep answering."""
    import hashlib
    import random
    from datetime import UTC, datetime, timedelta

    host = install_v1(world)
    repo, key = world["tmp"] / "repo", world["keys"][0]
    good = pkgs.build(pkgs.source_dir(world["tmp"] / "src-good", scale=3.0), world["tmp"] / "good.edgepkg", key,
                      counter=20, version="good")  # fmt: skip
    raw = good.read_bytes()
    rng = random.Random(8)
    now = datetime.now(UTC)
    cases: list[tuple[str, bytes]] = [
        (f"flipped-byte-{off}", raw[:off] + bytes([raw[off] ^ 0x40]) + raw[off + 1 :])
        for off in sorted(rng.sample(range(len(raw)), 8))
    ]
    cases += [
        ("truncated", raw[: len(raw) // 2]),
        ("trailing-bytes", raw + b"\0" * 1024 + b"x"),
        ("random-bytes", rng.randbytes(4096)),
        ("zip", b"PK\x03\x04" + rng.randbytes(2000)),
    ]
    for name, issued in (("expired", now - timedelta(days=400)), ("not-yet-valid", now + timedelta(days=30))):
        src = pkgs.source_dir(world["tmp"] / f"src-{name}")
        cases.append((name, pkgs.build(src, world["tmp"] / f"{name}.edgepkg", key, counter=21, version=name,
                                       issued_at=issued).read_bytes()))  # fmt: skip
    refused = 0
    for i, (name, data) in enumerate(cases):
        path = repo / f"bad-{name}.edgepkg"
        path.write_bytes(data)
        desired = Desired("tiny", f"bad-{name}", hashlib.sha256(data).hexdigest(), 30 + i, len(data))
        seen = len(host.events("rollback"))
        host.desire(desired)
        event = host.wait_for(lambda seen=seen: host.events("rollback")[seen:], f"a rollback for {name}", 30)[-1]
        assert event["version"] == f"bad-{name}" and event["serving"]["version"] == "v1", event
        answer(host, 1.0)
        refused += 1
    # an empty package cannot even be named: a desired with size 0 is refused as malformed
    seen_errors = len(host.events("error"))
    host.publish("desired", b'{"name": "tiny", "version": "empty", "sha256": "' + b"e3" * 32 + b'", "counter": 98, '
                 b'"size": 0}', retain=True)  # fmt: skip
    event = host.wait_for(lambda: host.events("error")[seen_errors:], "an error for the empty package", 30)[-1]
    assert "size > 0" in event["reason"]
    answer(host, 1.0)
    # the desired message itself lies: it names bytes that are not the package serve holds under that hash
    lying = Desired("tiny", "lying", "ab" * 32, 99, len(raw))
    seen = len(host.events("rollback"))
    host.desire(lying)
    event = host.wait_for(lambda: host.events("rollback")[seen:], "a rollback for the lying desired", 30)[-1]
    assert "no package with sha256" in event["reason"] and event["serving"]["version"] == "v1"
    answer(host, 1.0)
    state = json.loads((world["tmp"] / "data" / "state.json").read_text())
    assert state["installed"]["version"] == "v1"
    print(f"\nbad packages sent to the running agent: {len(cases) + 2}, refused: {refused + 2}")


def test_two_agents_with_the_same_device_id_are_detected_and_reported_without_a_reconnect_loop(world, tmp_path):
    host = install_v1(world)
    first = world["agents"][0]
    twin = world["agent"](data_dir=tmp_path / "twin-data")
    events = host.wait_for(lambda: len(host.events("conflict")) >= 2 and host.events("conflict"), "both report", 30)
    reporters = {e["instance"] for e in events}
    assert len(reporters) == 2 and all(e["other_instance"] in reporters - {e["instance"]} for e in events)
    assert "give every device its own --device-id" in events[0]["reason"]
    time.sleep(3)  # a kick-each-other loop would show up as reconnects
    assert twin.connects == 1 and first.connects == 1
    assert len(host.events("conflict")) == 2  # reported once each, not on every state message


def test_a_stale_will_from_a_dead_connection_does_not_leave_the_running_agent_offline(world):
    """A broker (another cluster node, or one that noticed a dead TCP connection only at keepalive timeout)
    may publish the agent's will after the agent has reconnected: the agent hears its own "offline" and
    says "online" again, so the retained state matches reality."""
    host = install_v1(world)
    online = host.wait_for(lambda: [s for s in host.messages["state"] if s.get("status") == "online"], "online")[-1]
    seen = len(host.messages["state"])
    will = dict(online, status="offline")
    host.publish("state", json.dumps(will).encode(), retain=True)
    host.wait_for(
        lambda: any(s.get("status") == "online" for s in host.messages["state"][seen + 1 :]), "online again", 10
    )
    # another instance's offline (its previous run) is history, not a will to answer
    seen = len(host.messages["state"])
    host.publish("state", json.dumps(dict(online, status="offline", instance="previous-run")).encode())
    time.sleep(1.5)
    assert [s["status"] for s in host.messages["state"][seen:]] == ["offline"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs as the agent's data dir: a disk that really fills up (ENOSPC). Needs root to mount."""
    import subprocess

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the disk-full test needs a disk that fills up")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_download_keeps_the_old_model_and_the_download_resumes_when_space_returns(world, small_disk):
    import os
    import shutil

    host = world["host"]
    world["agent"](data_dir=small_disk / "data", retry_interval=1.0)
    host.desire(world["package"]("v1", counter=7))
    serving(host, "v1")
    v2 = world["package"]("v2", counter=8, scale=2.0, extra={"pad.bin": os.urandom(300_000)})
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 100_000))  # ~100 KB left: v2 needs ~300
    host.desire(v2)
    event = host.event_matching("rollback", "free space in the data dir", timeout=30)
    assert event["serving"]["version"] == "v1"
    answer(host, 1.0)  # the old model keeps answering
    part = small_disk / "data" / "downloads" / f"{v2.sha256}.have"
    held = len(part.read_text().splitlines())
    assert held > 0
    ballast.unlink()  # space returns
    serving(host, "v2")
    answer(host, 2.0)
    resumed = host.wait_for(lambda: [e for e in host.events("download") if e["resumed_chunks"] > 0], "a resume", 30)
    assert resumed[-1]["resumed_chunks"] >= held - 1  # a torn last record costs one chunk


def test_a_restarted_agent_says_busy_while_it_loads_and_requests_sent_while_it_was_away_are_not_answered(world):
    """Requests are interactive (docs/protocol.md): one published while no agent is subscribed is not kept
    for it (clean session), and one that arrives while the installed model loads is told to ask again,
    never that nothing is installed."""
    host = install_v1(world)
    world["agents"][0].stop()
    host.publish("infer/request", json.dumps({"id": "while-away", "inputs": {"x": encode(X)}}).encode())
    world["agent"]()
    answers, lost = [], 0
    deadline = time.monotonic() + 30
    while not any("outputs" in a for a in answers):
        assert time.monotonic() < deadline, answers[-3:]
        try:
            answers.append(host.infer({"x": encode(X)}, timeout=3))
        except AssertionError:
            # published before the new agent's subscription was in place (start() connects asynchronously):
            # not kept for it, by the same rule as "while-away" (seen once in a CI run)
            lost += 1
    assert lost <= 2 and all("outputs" in a or a["error"].startswith("busy: loading") for a in answers), answers
    time.sleep(1.0)
    assert not [r for r in host.messages["infer/response"] if isinstance(r, dict) and r.get("id") == "while-away"]
