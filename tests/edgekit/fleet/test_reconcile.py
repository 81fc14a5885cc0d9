"""Issue 20: the reconciler in serve makes devices converge when the retained desired state never reached them.

Simulated devices (``edgekit.fleet.sim``, following ``desired`` and downloading through serve's chunk
protocol) on a real Mosquitto. The deployment is recorded in the store but its retained message is not on
the broker (as when it was published to a cluster node that died before replicating it): only the
reconciler can tell the devices. Its lease and its refusals are checked against real SQLite and
PostgreSQL stores.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time

import pytest
from edgekit_agent.protocol import Desired
from fleet import wait_until
from stores import store_url

from edgekit.fleet.deploy import publish_desired
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.reconcile import LEASE, Reconciler
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.sim import Simulation
from edgekit.fleet.status import status_rows
from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration
GRACE = 2.0
DEVICES = 20


def repo_package(root, name="p.edgepkg", size=200_000) -> Desired:
    root.mkdir(exist_ok=True)
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return Desired("model", "2.0.0", hashlib.sha256(data).hexdigest(), 20, size)


@pytest.fixture
def fleet(tmp_path, broker):
    with store_url("sqlite", tmp_path) as url:
        desired = repo_package(tmp_path / "repo")
        server = PackageServer(tmp_path / "repo", broker.url, ingest=Ingest(Store(url)), reconcile_grace=GRACE)
        server.start()
        sim = Simulation(broker.url, "lab", DEVICES, follow=tmp_path / "devices")
        sim.start()
        store = Store(url)
        wait_until(lambda: len(store.devices("lab")) == DEVICES, "every simulated device registered", 60)
        try:
            yield {"store": store, "server": server, "sim": sim, "desired": desired, "url": url, "broker": broker}
        finally:
            sim.stop()
            server.stop()
            store.close()


def running(store, desired) -> set[str]:
    return {d["device"] for d in store.devices("lab") if d["package_counter"] == desired.counter}


def test_devices_the_retained_desired_never_reached_converge_through_the_reconciler(fleet):
    store, desired, server = fleet["store"], fleet["desired"], fleet["server"]
    t0 = time.time()
    for d in store.devices("lab"):  # recorded as deploy does, but nothing retained on the broker
        store.record_deployment("lab", d["device"], desired, None, None)
    converged: dict[str, float] = {}

    def all_converged():
        for device in running(store, desired) - set(converged):
            converged[device] = time.time() - t0
        return len(converged) == DEVICES

    wait_until(all_converged, "every device converged through the reconciler", 60)
    times = sorted(converged.values())
    print(f"convergence after a lost desired, {DEVICES} devices, grace {GRACE:g} s: "
          f"p50 {statistics.median(times):.2f} s, max {times[-1]:.2f} s")  # fmt: skip
    assert server.reconciler.stats.resends >= DEVICES
    resent = [e for e in store.events("lab", limit=1000) if e["kind"] == "resent_desired"]
    assert {e["device"] for e in resent} == set(converged)
    # converged devices are never told again
    before = server.reconciler.stats.resends
    time.sleep(3 * GRACE)
    assert server.reconciler.stats.resends == before
    assert all(r["desired_resends"] == 0 and not r["stuck"] for r in status_rows(store, "lab"))


def test_a_healthy_deploy_gets_no_resend(fleet):
    store, desired, server, broker = fleet["store"], fleet["desired"], fleet["server"], fleet["broker"]
    devices = [d["device"] for d in store.devices("lab")]
    publish_desired(broker.url, "lab", devices, desired)
    for device in devices:
        store.record_deployment("lab", device, desired, None, None)
    wait_until(lambda: len(running(store, desired)) == DEVICES, "every device converged", 60)
    time.sleep(3 * GRACE)
    assert server.reconciler.stats.resends == 0 and server.reconciler.stats.leader


def test_a_device_that_never_converges_is_flagged_stuck_with_a_reason_after_its_resends(fleet):
    store, server = fleet["store"], fleet["server"]
    server.reconciler.max_resends = 2
    missing = Desired("model", "9.9.9", "e" * 64, 30, 1000)  # not in serve's repository: every chunk is refused
    store.record_deployment("lab", "sim-0003", missing, None, None)
    row = wait_until(
        lambda: next((r for r in status_rows(store, "lab") if r["device"] == "sim-0003" and r["stuck"]), None),
        "sim-0003 flagged stuck",
        60,
    )
    assert row["desired_resends"] == 2 and row["stuck_reason"]
    assert [e["kind"] for e in store.events("lab", "sim-0003")].count("stuck") == 1
    assert sum(r["stuck"] for r in status_rows(store, "lab")) == 1


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_one_worker_reconciles_at_a_time_and_a_dead_one_hands_over_within_the_grace(engine, tmp_path):
    with store_url(engine, tmp_path) as url:
        sent: list[tuple[str, str, str]] = []
        a = Reconciler(url, lambda f, d, desired: sent.append(("a", f, d)), grace=1.0)
        b = Reconciler(url, lambda f, d, desired: sent.append(("b", f, d)), grace=1.0)
        store = Store(url)
        state = {"status": "online", "package": {"name": "model", "version": "1.0.0", "counter": 10}}
        from edgekit_agent.protocol import dumps

        from edgekit.fleet.store import digest, message

        store.ingest([message("lab", "d1", "state", state, digest("s", dumps(state)), time.time())])
        store.record_deployment("lab", "d1", Desired("model", "2.0.0", "a" * 64, 20, 100), None, None)
        later = time.time() + 5  # past the deployment's grace
        assert a.tick(store, now=later) == [("lab", "d1")]
        assert b.tick(Store(url), now=later + 100) == [] and not b.stats.leader  # a holds the lease
        assert [s[0] for s in sent] == ["a"]
        time.sleep(1.2)  # a stops renewing (it died): its lease expires after the grace
        assert b.tick(Store(url), now=later + 100) == [("lab", "d1")] and b.stats.leader
        assert store.query("SELECT holder FROM leases WHERE name = ?", (LEASE,))[0]["holder"] == b.holder
        store.close()


def test_a_device_the_reconciler_flags_stuck_breaches_its_rollout_wave(tmp_path):
    from dataclasses import asdict

    from edgekit.fleet import rollout as ro

    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    package = {"path": str(tmp_path / "p.edgepkg"), "name": "model", "version": "2.0.0", "sha256": "a" * 64,
               "counter": 20, "size": 100, "profile": "rpi5"}  # fmt: skip
    doc = {"fleet": "lab", "log": [], "package": package, "policy": asdict(ro.Policy(install_timeout=30.0, poll=0.05))}
    runner = ro.Runner(store, "mqtt://127.0.0.1:1", doc, key=None, repository=tmp_path)
    wave = {"devices": ["d1"], "started": time.time() - 1}
    store.record_host_event("lab", "d1", "stuck", {"resends": 3, "reason": "an older release's",
                                                   "version": "1.9.0"})  # fmt: skip
    timed_out = runner._await_install(
        wave | {"started": time.time() - 29.9}
    )  # the other release's event is not a breach
    assert timed_out == "not installed within 30 s on d1"
    store.record_host_event("lab", "d1", "stuck", {"resends": 5, "reason": "rollback: bad signature",
                                                   "version": "2.0.0"})  # fmt: skip
    breach = runner._await_install(wave)
    assert breach == "d1 is stuck after 5 resends (rollback: bad signature)"
    store.close()


def test_fleet_status_says_when_a_serve_worker_is_unhealthy_or_silent(tmp_path):
    from edgekit.fleet.status import worker_lines

    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    assert "no edgekit serve worker has reported" in worker_lines(store)[0]
    store.heartbeat("w1", time.time(), True, "chunks served 3")
    store.heartbeat("w2", time.time(), False, "ingest writer restarts 4; last error: boom")
    lines = worker_lines(store)
    assert "w1: [green]healthy" in lines[0] and "w2: [red]UNHEALTHY[/] (ingest writer restarts 4" in lines[1]
    store.close()
