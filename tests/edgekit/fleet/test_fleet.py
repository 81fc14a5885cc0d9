"""The fleet from the CLI against real parts: Mosquitto, ``edgekit serve`` ingesting into SQLite, real agents
running real models. deploy → status/history/events/report; canary rollouts that stop and roll back a slower
model in the first wave, and let a healthy one reach every device."""

from __future__ import annotations

import json
import platform
import socket
import threading
import time
import uuid

import numpy as np
import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from edgekit_agent.inference import encode
from edgekit_agent.protocol import subscription, topic
from fleet import wait_until

from edgekit.fleet import mqtt
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration
DEVICES = ("dev-1", "dev-2")


class Traffic:
    """Inference requests to every device at ``rate`` per second each, so telemetry carries real latencies."""

    def __init__(self, url: str, fleet: str, devices: tuple[str, ...], rate: float = 40.0) -> None:
        self.client = mqtt.client("traffic")
        mqtt.connect(self.client, url)
        self.stop_event = threading.Event()
        x = {"x": encode(np.linspace(0, 1, 16, dtype=np.float32)[None])}

        def loop() -> None:
            while not self.stop_event.wait(1 / rate):
                for d in devices:
                    body = json.dumps({"id": uuid.uuid4().hex[:12], "inputs": x}).encode()
                    self.client.publish(topic(fleet, d, "infer/request"), body, qos=0)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(tmp_path, broker, monkeypatch, cli):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    for name, value in (("BROKER", broker.url), ("DB", db), ("FLEET", "lab"), ("PACKAGES", str(repo))):
        monkeypatch.setenv(f"EDGEKIT_{name}", value)
    ingest = Ingest(Store(db))
    # a short grace: a reconciler that resent to a device mid-update or converged would show in the tests
    server = PackageServer(repo, broker.url, ingest=ingest, reconcile_grace=3.0)
    server.start()
    agents = []
    for device in DEVICES:
        cfg = AgentConfig(broker=broker.url, fleet="lab", device_id=device, profile=pkgs.PROFILE,
                          data_dir=tmp_path / device, trust=[keys[1]], telemetry_interval=0.5,
                          chunk_size=64 * 1024, chunk_timeout=2.0)  # fmt: skip
        agent = Agent(cfg)
        agent.start()
        agents.append(agent)
    store = Store(db)
    wait_until(lambda: len(store.devices("lab")) == len(DEVICES), "both devices in the store")

    def package(version: str, *, counter: int, heavy: bool = False) -> str:
        src = pkgs.source_dir(tmp_path / f"src-{version}", model=pkgs.heavy_onnx() if heavy else None)
        out = tmp_path / "built" / f"tiny-{version}.edgepkg"
        out.parent.mkdir(exist_ok=True)
        return str(pkgs.build(src, out, keys[0], counter=counter, version=version))

    traffic = Traffic(broker.url, "lab", DEVICES)
    yield {"package": package, "store": store, "ingest": ingest, "keys": keys, "cli": cli, "tmp": tmp_path,
           "repo": repo, "server": server, "url": broker.url, "agents": agents}  # fmt: skip
    traffic.stop()
    for agent in agents:
        agent.stop()
    server.stop()


def versions(store: Store) -> dict[str, str | None]:
    return {d["device"]: d["package_version"] for d in store.devices("lab")}


def serving_everywhere(f, version: str) -> None:
    wait_until(lambda: set(versions(f["store"]).values()) == {version}, f"every device on {version}")
    # enough telemetry on this version for a baseline
    wait_until(
        lambda: all(
            len([r for r in f["store"].telemetry("lab", d) if r["package_version"] == version and r["p95_ms"]]) >= 3
            for d in DEVICES
        ),
        f"telemetry on {version}",
    )


def test_deploy_status_history_events_label_report(fleet):
    f, cli = fleet, fleet["cli"]
    v1 = f["package"]("v1", counter=10)
    code, out, err = cli("deploy", v1, "--group", "x86-64-generic", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["devices"] == list(DEVICES)
    serving_everywhere(f, "v1")

    code, out, _ = cli("fleet", "status", "--format", "json")
    rows = {r["device"]: r for r in json.loads(out)}
    assert rows["dev-1"]["online"] and rows["dev-1"]["version"] == "v1" and rows["dev-1"]["p95_ms"] > 0
    assert rows["dev-1"]["runtime"] == "onnxruntime:CPUExecutionProvider"
    assert rows["dev-1"]["power_source"] in {"estimate", "none", "rapl", "hwmon"}
    assert rows["dev-1"]["arch"] == platform.machine() and rows["dev-1"]["emulated"] is False
    code, out, _ = cli("fleet", "status")
    assert code == 0 and "dev-2" in out and "tiny@v1" in out
    assert "healthy (chunks served" in out and "UNHEALTHY" not in out  # the fixture's serve heartbeat
    code, out, _ = cli("fleet", "watch", "--count", "2", "--interval", "0.1")
    assert code == 0 and "dev-1" in out and "tiny@v1" in out

    code, out, _ = cli("fleet", "history", "dev-1", "--metric", "p95_ms", "--since", "10m", "--format", "json")
    points = json.loads(out)
    assert code == 0 and len(points) >= 3 and all(p["version"] in (None, "v1") for p in points)
    code, out, _ = cli("fleet", "events", "--device", "dev-2", "--format", "json")
    assert [e["body"]["state"] for e in json.loads(out) if e["kind"] == "update"][-1] == "committed"

    code, out, _ = cli("fleet", "label", "dev-2", "group=canary", "--format", "json")
    assert code == 0 and json.loads(out)["labels"] == {"group": "canary"}
    v2 = f["package"]("v2", counter=11)
    code, out, err = cli("deploy", v2, "--group", "canary")
    assert code == 0, err
    wait_until(lambda: versions(f["store"]) == {"dev-1": "v1", "dev-2": "v2"}, "only the canary on v2")

    report = f["tmp"] / "report.html"
    code, out, err = cli("fleet", "report", "--out", report, "--since", "1h")
    assert code == 0, err
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 4 and "dev-1" in page and "<script" not in page

    # user errors: one line, exit != 0, nothing changed
    code, _, err = cli("deploy", v2, "--device", "nope")
    assert code != 0 and "unknown device 'nope'" in err and "Traceback" not in err
    code, _, err = cli("fleet", "history", "dev-1", "--metric", "bogus")
    assert code != 0 and "--metric 'bogus'" in err
    code, _, err = cli("deploy", v2, "--group", "all", "--broker", "mqtt://127.0.0.1:1")
    assert code != 0 and "cannot reach the MQTT broker at 127.0.0.1:1" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("serve", "--metrics-port", busy.getsockname()[1])
    assert code != 0 and "choose another --metrics-port" in err and "Traceback" not in err
    code, _, err = cli("fleet", "status", "--db", "postgresql://postgres@127.0.0.1:1/x")
    assert code != 0 and "cannot reach PostgreSQL at 127.0.0.1:1" in err
    assert versions(f["store"]) == {"dev-1": "v1", "dev-2": "v2"}


def test_rollout_stops_a_slower_model_in_the_first_wave_and_rolls_back_then_a_healthy_one_reaches_all(fleet):
    f, cli = fleet, fleet["cli"]
    code, _, err = cli("deploy", f["package"]("v1", counter=10), "--group", "all")
    assert code == 0, err
    serving_everywhere(f, "v1")

    slow = f["package"]("v2-slow", counter=11, heavy=True)

    # the slow model is ~20x slower; a 100% limit keeps the healthy rollout clear of this shared machine's noise
    def args(p95_limit: str) -> list[str]:
        return ["--group", "all", "--waves", "1,100%", "--min-soak", "3s", "--max-p95-regression", p95_limit,
                "--install-timeout", "90s", "--key", f["keys"][0], "--format", "json"]  # fmt: skip

    code, out, err = cli("rollout", slow, *args("100%"))
    doc = json.loads(out)
    assert code == 3, json.dumps({k: doc[k] for k in ("waves", "log", "status")})
    assert doc["status"] == "rolled_back" and doc["waves"][0]["status"] == "breached"
    assert "p95" in doc["waves"][0]["reason"] and doc["waves"][1]["status"] == "pending"
    assert doc["waves"][0]["observed"]["p95_ms"] > 2 * doc["waves"][0]["baseline"]["p95_ms"]
    first = doc["waves"][0]["devices"][0]
    # the touched device is back on v1 (re-issued under a higher counter); the other never left it
    wait_until(lambda: set(versions(f["store"]).values()) == {"v1"}, "every device back on v1")
    reissued = [d for d in f["store"].deployments("lab", first) if d["version"] == "v1"][-1]
    assert reissued["counter"] > 11
    code, out, _ = cli("rollout", "status", "--format", "json")
    assert json.loads(out)["status"] == "rolled_back"

    # counters default to the issue time in seconds, as the re-issued v1's does: v3 is newer than both.
    # v3 is as fast as v1, but a 0.2 ms p95 can triple when another process takes the core (seen: +238 %
    # while a MiniLM packaging ran beside the suite): this half is about convergence, so its limit is out
    # of noise's reach, while the ~20x slower v2 above is caught at +100 %.
    healthy = f["package"]("v3", counter=int(time.time()) + 60)
    code, out, err = cli("rollout", healthy, *args("2000%"))
    doc = json.loads(out)
    assert code == 0, json.dumps({k: doc[k] for k in ("waves", "log", "status")})
    assert doc["status"] == "completed" and [w["status"] for w in doc["waves"]] == ["healthy", "healthy"]
    assert set(versions(f["store"]).values()) == {"v3"}
    code, out, _ = cli("rollout", "status")
    assert code == 0 and "completed" in out
    assert f["server"].reconciler.stats.resends == 0  # every device was mid-update or converged throughout


def test_rollout_state_survives_a_restart_and_resume_finishes_it(fleet):
    from edgekit.fleet import rollout as ro

    f, cli = fleet, fleet["cli"]
    code, _, err = cli("deploy", f["package"]("v1", counter=10), "--group", "all")
    assert code == 0, err
    serving_everywhere(f, "v1")
    # plan only (as if the rollout command was killed right after saving its plan)
    policy = ro.Policy(min_soak=1.0, install_timeout=90.0, max_p95_regression=10.0)  # about state, not latency
    doc = ro.plan(f["store"], "lab", __import__("pathlib").Path(f["package"]("v2", counter=11)), f["repo"], "all",
                  ["1", "100%"], policy)  # fmt: skip
    code, _, err = cli("rollout", f["package"]("v9", counter=19), "--group", "all")
    assert code != 0 and f"rollout {doc['id']} is still running" in err
    code, out, err = cli("rollout", "resume", "--key", f["keys"][0], "--format", "json")
    assert code == 0, err
    assert json.loads(out)["status"] == "completed" and set(versions(f["store"]).values()) == {"v2"}
    code, _, err = cli("rollout", "abort")
    assert code != 0 and "only a running rollout can be aborted" in err


def test_fleet_bench_times_a_package_on_every_device_without_deploying_it_and_reports_what_they_answered(fleet):
    f, cli = fleet, fleet["cli"]
    code, _, err = cli("deploy", f["package"]("v1", counter=10), "--group", "all")
    assert code == 0, err
    serving_everywhere(f, "v1")
    seen: list[bytes] = []  # the bench/response messages as they are on the broker
    watcher = mqtt.client("watch")
    watcher.on_message = lambda _c, _u, msg: seen.append(bytes(msg.payload))
    watcher.on_connect = lambda c, *_: c.subscribe(subscription("lab", "bench/response"), qos=1)
    mqtt.connect(watcher, f["url"])
    time.sleep(0.3)
    candidate = f["package"]("heavy", counter=11, heavy=True)
    try:
        code, out, err = cli("fleet", "bench", candidate, "--group", "all", "-n", "40", "--batch", "1", "--batch", "4",
                             "--format", "json")  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        wait_until(lambda: len(seen) >= 2, "both answers seen on the broker", 10)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    on_broker = {json.loads(m)["id"]: json.loads(m) for m in seen}
    assert len(result["answers"]) == 2
    for device, answer in result["answers"].items():
        assert answer == on_broker[answer["id"]], device  # what the command reports is what the device said
        assert answer["status"] == "ok" and answer["sample"]["ok"]
        assert [b["batch"] for b in answer["batches"]] == [1, 4] and answer["batches"][0]["runs"] == 40
    assert set(versions(f["store"]).values()) == {"v1"}  # benched, not deployed
    stored = f["store"].benches("lab")
    assert sorted(b["device"] for b in stored) == sorted(DEVICES) and all(b["version"] == "heavy" for b in stored)
    report = f["tmp"] / "report.html"
    code, _, err = cli("fleet", "report", "--out", report)
    assert code == 0 and "Benches on devices" in report.read_text() and "heavy" in report.read_text(), err
    # a device that does not answer is named, after the timeout, in one line; nothing is installed
    f["agents"][1].stop()
    code, _, err = cli("fleet", "bench", candidate, "--device", "dev-2", "--timeout", "3s")
    assert code != 0 and "Traceback" not in err
    assert "no bench answer within 3 s from dev-2" in " ".join(err.split()), err
    # bounds are checked before anything is sent
    code, _, err = cli("fleet", "bench", candidate, "--device", "dev-1", "-n", "1000000")
    assert code != 0 and "runs must be in 1..10000" in err
