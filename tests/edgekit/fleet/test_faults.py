"""Issue 8, host side: ``edgekit serve`` killed with SIGKILL while it ingests.

A persistent session (``--session``) makes the broker keep what devices publish while serve is down. After
each kill the store must be intact (SQLite ``PRAGMA integrity_check``) and, once serve is back, hold every
message exactly once: nothing lost, nothing double-counted.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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
