"""Issue 8, host side: ``edgekit serve`` killed with SIGKILL while it ingests, and the broker restarted
while an agent downloads and reports.

A persistent session (``--session``) makes the broker keep what devices publish while serve is down. After
each kill the store must be intact (SQLite ``PRAGMA integrity_check``) and, once serve is back, hold every
message exactly once: nothing lost, nothing double-counted.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pkgs
import pytest

from edgekit.fleet.serve import PackageServer
from edgekit.fleet.sim import Simulation
from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration
KILLS = 3


def test_serve_killed_mid_ingest_loses_nothing_and_counts_nothing_twice(tmp_path, broker):
    db = tmp_path / "fleet.db"
    (tmp_path / "pk").mkdir()
    edgekit = Path(sys.executable).with_name("edgekit")
    cmd = [str(edgekit), "serve", "--packages", str(tmp_path / "pk"), "--broker", broker.url, "--db", f"sqlite:///{db}",
           "--session", "faults"]  # fmt: skip

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # connected and subscribed (its session exists from the first start on)
        assert proc.poll() is None, proc.stderr.read()
        return proc

    serve = start()
    sim = Simulation(broker.url, "lab", 20)
    rng = random.Random(8)
    try:
        sim.start()
        sender = threading.Thread(target=lambda: sim.run(messages=150, rate=25.0), daemon=True)
        sender.start()  # 20 devices x 25 msg/s = 500 msg/s for 6 s
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 1.5))
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)
            with sqlite3.connect(db) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            serve = start()
        sender.join(60)
        assert sim.wait_acked(60)
        store = Store(f"sqlite:///{db}")
        deadline = time.monotonic() + 60
        while store.counts()["telemetry"] < sim.sent and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = store.counts()["telemetry"]
        print(f"\nserve killed {KILLS} times mid-ingest: sent {sim.sent}, stored {stored}")
        assert stored == sim.sent, f"sent {sim.sent}, stored {stored}"
    finally:
        sim.stop()
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)


class SlowServer(PackageServer):
    """Takes ~5 ms per chunk, so a download lasts long enough to lose its broker halfway."""

    def answer(self, request):
        time.sleep(0.005)
        return super().answer(request)


def test_a_broker_restart_mid_transfer_and_mid_telemetry_loses_nothing_and_keeps_order(tmp_path):
    """Mosquitto with persistence (sessions, queued and retained messages kept) is stopped while an agent
    downloads and reports telemetry every 0.1 s, and started again 1.5 s later on the same port."""
    from edgekit_agent.agent import Agent, AgentConfig
    from edgekit_agent.protocol import Desired
    from fleet import Host, wait_until

    from edgekit.fleet.broker import LocalBroker
    from edgekit.fleet.ingest import Ingest
    from edgekit.fleet.serve import sha256_file

    broker = LocalBroker(tmp_path / "broker", persist=True)
    broker.start()
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    server = SlowServer(repo, broker.url, ingest=Ingest(Store(db)), session="restart")
    server.start()
    path = pkgs.build(pkgs.source_dir(tmp_path / "src", extra={"pad.bin": os.urandom(400_000)}),
                      repo / "v1.edgepkg", keys[0], counter=3, version="v1")  # fmt: skip
    desired = Desired("tiny", "v1", sha256_file(path), 3, path.stat().st_size)
    chunks = -(-desired.size // 1024)
    cfg = AgentConfig(broker=broker.url, fleet="lab", device_id="dev-1", profile=pkgs.PROFILE,
                      data_dir=tmp_path / "data", trust=[keys[1]], telemetry_interval=0.1, chunk_size=1024,
                      chunk_timeout=1.0, retry_interval=1.0)  # fmt: skip
    agent = Agent(cfg)
    agent.start()
    host = Host(broker.url)
    try:
        host.desire(desired)
        have = tmp_path / "data" / "downloads" / f"{desired.sha256}.have"
        wait_until(lambda: have.exists() and len(have.read_text().splitlines()) > chunks // 4, "a quarter fetched")
        t_stop = time.time()
        broker.stop()  # SIGTERM: Mosquitto saves sessions and retained messages
        time.sleep(1.5)
        assert agent.model is None and len(agent.outbox) > 0  # telemetry is waiting on the device
        t_start = time.time()
        broker.start()
        wait_until(lambda: agent.model is not None and agent.model.manifest.version == "v1", "v1 installed", 90)
        wait_until(lambda: len(agent.outbox) == 0, "the queued telemetry sent", 30)
        time.sleep(0.5)
        assert server.ingest.flush(10)
        stats = host.wait_for(lambda: host.events("download"), "the download event", 30)[-1]
        assert stats["chunks"] + stats["resumed_chunks"] <= chunks * 1.2, f"the download restarted: {stats}"
        with sqlite3.connect(tmp_path / "fleet.db") as conn:
            times = [r[0] for r in conn.execute("SELECT t FROM telemetry WHERE device = 'dev-1' ORDER BY rowid")]
        print(f"\nbroker down {t_start - t_stop:.1f} s mid-transfer: {len(times)} telemetry messages stored in order, "
              f"download {stats}")  # fmt: skip
        assert times == sorted(times), "telemetry stored out of order"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # produced every 0.1 s whatever the connection: a lost message shows as a gap of 0.2 s or more
        assert len(times) > 20 and max(gaps) < 0.19, f"{len(times)} messages, largest gap {max(gaps):.3f} s"
    finally:
        agent.stop()
        host.close()
        server.stop()
        broker.stop()


LOAD_DEVICES = int(os.environ.get("EDGEKIT_SOAK_DEVICES", "60"))
LOAD_SECONDS = float(os.environ.get("EDGEKIT_SOAK_SECONDS", "8"))
DOWNLOADS = 20


def test_load_telemetry_from_many_devices_plus_concurrent_downloads_stored_exactly_once(tmp_path, broker):
    """Issue 8's load case: N simulated devices at 1 Hz (``edgekit sim agents`` processes, 60 x 8 s here,
    500 x 60 s in make soak) while 20 more devices download a package at the same time; serve runs as its
    own process and its CPU and peak memory are recorded."""
    import json

    import psutil
    from edgekit_agent.protocol import Desired

    from edgekit.fleet.deploy import publish_desired
    from edgekit.fleet.serve import sha256_file

    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    pkg = pkgs.build(pkgs.source_dir(tmp_path / "src", extra={"pad.bin": os.urandom(500_000)}),
                     repo / "v1.edgepkg", keys[0], counter=1, version="v1")  # fmt: skip
    db = tmp_path / "fleet.db"
    edgekit = Path(sys.executable).with_name("edgekit")
    serve = subprocess.Popen([str(edgekit), "serve", "--packages", str(repo), "--broker", broker.url, "--db",
                              f"sqlite:///{db}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.0)
    watch = psutil.Process(serve.pid)
    watch.cpu_percent()
    peak_rss = 0
    downloaders = Simulation(broker.url, "load", DOWNLOADS, prefix="dl", follow=tmp_path / "dl")
    procs = []
    try:
        downloaders.start()
        shards = [min(250, LOAD_DEVICES - i) for i in range(0, LOAD_DEVICES, 250)]
        t0 = time.monotonic()
        for k, n in enumerate(shards):
            procs.append(subprocess.Popen(
                [str(edgekit), "sim", "agents", str(n), "--broker", broker.url, "--fleet", "load", "--prefix",
                 f"t{k}", "--rate", "1", "--duration", f"{LOAD_SECONDS:g}s", "--format", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))  # fmt: skip
        time.sleep(2.0)  # telemetry flowing: now every downloader is told to fetch the package
        desired = Desired("tiny", "v1", sha256_file(pkg), 1, pkg.stat().st_size)
        publish_desired(broker.url, "load", [d.device for d in downloaders.devices], desired)
        while any(p.poll() is None for p in procs) or downloaders.running("v1") < DOWNLOADS:
            peak_rss = max(peak_rss, watch.memory_info().rss)
            if time.monotonic() - t0 > LOAD_SECONDS + 120:
                break
            time.sleep(0.2)
        cpu = watch.cpu_percent()  # since the start of the load, in % of one core
        results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        sent = sum(r["sent"] for r in results)
        assert all(r["all_acknowledged"] for r in results)
        assert downloaders.running("v1") == DOWNLOADS  # each checked the package's sha256
        store = Store(f"sqlite:///{db}")

        def stored() -> int:
            return store.query("SELECT COUNT(*) AS n FROM telemetry WHERE fleet = 'load'")[0]["n"]

        deadline = time.monotonic() + 60
        while stored() < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"\nload: {LOAD_DEVICES} devices x {LOAD_SECONDS:g} s at 1 Hz + {DOWNLOADS} downloads of "
              f"{pkg.stat().st_size:,} bytes: sent {sent}, stored {stored()}, serve CPU {cpu:.0f}% of a core, "
              f"peak RSS {peak_rss / 2**20:.0f} MiB")  # fmt: skip
        assert stored() == sent  # every telemetry message stored exactly once
    finally:
        downloaders.stop()
        for p in procs:
            p.kill()
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
