"""``edgekit serve`` ingesting over a real broker into SQLite and PostgreSQL: every QoS1 telemetry message
stored exactly once (duplicates re-published byte for byte are not double-counted), malformed messages
counted and survived, and the metrics endpoint reporting what was stored."""

from __future__ import annotations

import time
import urllib.request

import pytest
from stores import store_url

from edgekit.fleet import mqtt
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.metrics import MetricsServer
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.sim import Simulation
from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_every_message_stored_once_and_malformed_ones_survived(engine, tmp_path, broker):
    with store_url(engine, tmp_path) as url:
        ingest = Ingest(Store(url))
        server = PackageServer(tmp_path, broker.url, ingest=ingest)
        server.start()
        metrics = MetricsServer(0, server, url)
        metrics.start()
        sim = Simulation(broker.url, "lab", 20)
        try:
            sim.start()
            sim.run(messages=15, rate=None)
            assert sim.wait_acked(60)
            raw = mqtt.client("hostile")
            mqtt.connect(raw, broker.url)
            dup = sim.devices[0]
            payload = b'{"inferences": 1, "time": "2026-11-23T10:00:00Z", "seq": 99}'
            bad = [("edgekit/v1/lab/sim-0000/telemetry", b"\xff not json"), ("edgekit/v1/lab/sim-0000/events", b"[1]"),
                   ("edgekit/v1/lab/sim-0000/telemetry", b"{" * 100), ("edgekit/v1/lab/x y/telemetry", b"{}"),
                   ("edgekit/v1/lab/sim-0000/telemetry", b"9" * 300_000)]  # fmt: skip
            for name, body in [*bad, (f"edgekit/v1/lab/{dup.device}/telemetry", payload)] * 2:
                raw.publish(name, body, qos=1).wait_for_publish(5)
            raw.disconnect()
            raw.loop_stop()
            assert ingest.flush(30)
            store = Store(url)
            counts = store.counts()
            assert counts["telemetry"] == 20 * 15 + 1  # the duplicate pair is one message
            assert counts["devices"] == 20
            assert ingest.stats.malformed == 2 * len(bad)  # each sent twice, each refused by our parser
            assert ingest.stats.duplicates >= 1
            page = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
            assert 'edgekit_device_online{fleet="lab",device="sim-0007"} 1' in page
            assert f"edgekit_ingest_stored_total {ingest.stats.stored}" in page
        finally:
            sim.stop()
            metrics.stop()
            server.stop()


def test_a_persistent_session_keeps_what_devices_report_while_serve_is_down(tmp_path, broker):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    first = PackageServer(tmp_path, broker.url, ingest=Ingest(Store(url)), session="t1")
    first.start()
    first.stop()  # a restart (or crash): the broker keeps the session and its subscriptions
    sim = Simulation(broker.url, "lab", 5)
    try:
        sim.start()
        sim.run(messages=20, rate=None)
        assert sim.wait_acked(60)
    finally:
        sim.stop()
    ingest = Ingest(Store(url))
    second = PackageServer(tmp_path, broker.url, ingest=ingest, session="t1")
    second.start()
    try:
        store = Store(url)
        deadline = time.monotonic() + 30
        while store.counts()["telemetry"] < 5 * 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.counts()["telemetry"] == 5 * 20
    finally:
        second.stop()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_two_serve_workers_on_a_shared_subscription_split_the_load_and_store_each_message_once(
    engine, tmp_path, broker
):
    with store_url(engine, tmp_path) as url:
        workers = [PackageServer(tmp_path, broker.url, ingest=Ingest(Store(url)), share="edgekit") for _ in range(2)]
        for w in workers:
            w.start()
        sim = Simulation(broker.url, "lab", 20)
        try:
            sim.start()
            sim.run(messages=15, rate=None)
            assert sim.wait_acked(60)
            for w in workers:
                assert w.ingest.flush(30)
            time.sleep(0.5)  # a message still in flight from the broker to a worker
            for w in workers:
                assert w.ingest.flush(30)
            received = [w.ingest.stats.received for w in workers]
            assert all(n > 0 for n in received), received  # both workers took a share
            assert sum(w.ingest.stats.duplicates for w in workers) == 0  # nothing delivered twice
            assert Store(url).counts()["telemetry"] == 20 * 15
        finally:
            sim.stop()
            for w in workers:
                w.stop()
