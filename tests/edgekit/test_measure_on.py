"""``edgekit package --auto --measure-on DEVICE``: candidates ranked by what a real agent measured, not the
host. The agent runs in its own process, pinned to one core with one thread, while the host times with two:
a device that differs from the host, honestly. The choice must follow the ranking rule on the device's
figures, and the figures in the report must be the ones the device sent (seen on the broker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pkgs
import pytest
from edgekit_agent.protocol import subscription
from fleet import wait_until

from edgekit.fleet import mqtt
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def device(tmp_path, broker):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    server = PackageServer(repo, broker.url, ingest=Ingest(Store(db)))
    server.start()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    agent = subprocess.Popen(
        [*pin, sys.executable, "-m", "edgekit_agent", "run", "--broker", broker.url, "--fleet", "lab", "--device-id",
         "board-1", "--profile", "x86-64-generic", "--data-dir", str(tmp_path / "board"), "--trust", str(keys[1]),
         "--threads", "1", "--telemetry-interval", "1", "--power-model", "2.7:6.4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    store = Store(db)
    try:
        wait_until(lambda: any(d["device"] == "board-1" and d["status"] == "online" for d in store.devices("lab")),
                   "the agent online", 60)  # fmt: skip
        yield {"keys": keys, "repo": repo, "db": db, "url": broker.url, "store": store, "agent": agent}
    finally:
        agent.terminate()
        agent.wait(10)
        server.stop()


def test_auto_chooses_by_the_devices_medians_and_reports_what_the_device_sent(cli, device, tmp_path):
    seen: list[dict] = []
    watcher = mqtt.client("watch")
    watcher.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
    watcher.on_connect = lambda c, *_: c.subscribe(subscription("lab", "bench/response"), qos=1)
    mqtt.connect(watcher, device["url"])
    time.sleep(0.3)
    try:
        code, out, err = cli("package", "digits_cnn", "--profile", "x86-64-generic", "--auto", "--only",
                             "onnxruntime-int8-dynamic", "--measure-on", "board-1", "--measure-runs", "80",
                             "--key", device["keys"][0], "--out", tmp_path / "o", "--broker", device["url"],
                             "--db", device["db"], "--fleet", "lab", "--packages", device["repo"],
                             "--format", "json")  # fmt: skip
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert code == 0, err
    report = json.loads(out)
    rows = {c["name"]: c for c in report["candidates"]}
    measured = {n: r for n, r in rows.items() if r["device_figures"]}
    assert len(measured) >= 2, rows  # ORT fp32, its INT8 and OpenVINO fp32 were built within tolerance
    answers = {a["id"]: a for a in seen}
    for r in measured.values():
        figures = r["device_figures"]["board-1"]
        answer = answers[figures["bench_id"]]  # the device's own message
        first = answer["batches"][0]
        assert answer["status"] == "ok" and answer["threads"] == 1
        assert (figures["p50_ms"], figures["p50_interval_ms"]) == (first["p50_ms"], first["p50_interval_ms"])
        assert r["latency_ms"] == first["p50_ms"] and r["latency_interval_ms"] == first["p50_interval_ms"]
        assert r["measured_on"] == f"device:board-1:{answer['engine']}:{answer['device']}"
        assert r["host_latency_ms"] is not None
    # the rule on the device's figures: not measurably slower than the fastest, then the smallest
    ok = [r for r in rows.values() if r["status"] == "ok"]
    fastest = min(ok, key=lambda r: r["latency_ms"])
    tied = [r for r in ok if not fastest["latency_interval_ms"][1] < r["latency_interval_ms"][0]]
    chosen = rows[report["chosen"]]
    assert chosen in tied and chosen["size_bytes"] == min(r["size_bytes"] for r in tied), rows
    assert report["latency_measured_on"] == chosen["measured_on"]
    manifest_report = report  # the package's manifest carries the same report (edgepkg: everything but host-only)
    assert manifest_report["steps"][-1]["notes"]["device_latency"]["board-1"]["bench_id"] in answers
    # nothing was installed on the device by measuring, and the benches are in the store
    assert device["store"].device("lab", "board-1")["package_version"] is None
    assert {b["id"] for b in device["store"].benches("lab")} == {f["device_figures"]["board-1"]["bench_id"]
                                                                 for f in measured.values()}  # fmt: skip


def test_measure_on_refuses_before_any_work(cli, device, tmp_path):
    common = ["package", "digits_cnn", "--profile", "x86-64-generic", "--out", tmp_path / "o", "--broker",
              device["url"], "--db", device["db"], "--fleet", "lab", "--packages", device["repo"]]  # fmt: skip
    code, _, err = cli(*common, "--auto", "--measure-on", "board-1")
    assert code != 0 and "--measure-on needs --key" in err
    code, _, err = cli(*common, "--auto", "--measure-on", "nope", "--key", device["keys"][0])
    assert code != 0 and "nope" in err and "Traceback" not in err
    code, _, err = cli(*common, "--auto", "--measure-on", "board-1", "--key", device["keys"][0], "--objective", "x")
    assert code != 0 and "--objective 'x' must be one of latency, energy, size" in err
    code, _, err = cli(*common, "--auto", "--measure-on", "board-1", "--key", device["keys"][0], "--measure-runs", "0")
    assert code != 0 and "runs must be in 1..10000" in err
    code, _, err = cli(*common, "--profile", "rpi4", "--auto", "--measure-on", "board-1", "--key", device["keys"][0])
    assert code != 0 and "rpi4" in err and not (tmp_path / "o").exists()
    device["agent"].terminate()  # its will (or its goodbye) marks it offline in the store
    device["agent"].wait(10)
    wait_until(lambda: device["store"].device("lab", "board-1")["status"] == "offline", "board-1 offline", 30)
    code, _, err = cli(*common, "--auto", "--measure-on", "board-1", "--key", device["keys"][0])
    assert code != 0 and "board-1 is offline in the fleet store" in " ".join(err.split()), err


def test_energy_ranks_by_the_devices_marginal_energy_and_refuses_an_estimate_unless_allowed(cli, device, tmp_path):
    """The agent has a power model and (here) no sensor: its energy is an estimate, which ranks only with
    --allow-estimates. On a host with RAPL the agent measures instead, and both runs rank."""
    common = ["package", "digits_cnn", "--profile", "x86-64-generic", "--auto", "--only",
              "onnxruntime-int8-dynamic", "--measure-on", "board-1", "--measure-runs", "40", "--objective", "energy",
              "--key", device["keys"][0], "--broker", device["url"], "--db", device["db"], "--fleet", "lab",
              "--packages", device["repo"]]  # fmt: skip
    code, out, err = cli(*common, "--out", tmp_path / "a", "--format", "json")
    sensor = code == 0
    if not sensor:
        assert "only estimate power" in " ".join(err.split()) and "--allow-estimates" in err, err
        assert not (tmp_path / "a").exists()
        code, out, err = cli(*common, "--allow-estimates", "--out", tmp_path / "b", "--format", "json")
        assert code == 0, err
    report = json.loads(out)
    ok = [r for r in report["candidates"] if r["status"] == "ok"]
    assert all(r["energy_mj"] is not None and r["energy_is_estimate"] is not sensor for r in ok)
    chosen = next(r for r in ok if r["name"] == report["chosen"])
    assert chosen["energy_mj"] == min(r["energy_mj"] for r in ok), ok
