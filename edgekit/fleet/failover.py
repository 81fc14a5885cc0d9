"""The node-kill scenario of issue 9, shared by the scaling benchmark and ``tests/edgekit/fleet/test_cluster.py``.

100 simulated devices spread over a 3-node NATS cluster speaking MQTT install v1, then v2 in waves
``10%,100%``; node 0 (a third of the devices, and the first NATS URL of serve worker 0) is killed with
``kill -9`` when the last wave starts, while every device sends QoS1 telemetry at 2 Hz. Two serve workers
(NATS queue group + durable JetStream consumer, PostgreSQL) run the reconciler. The result holds the
figures; the caller asserts or reports them.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

DEVICES = 100
RATE = 2.0  # telemetry messages per second per device during the rollouts
RECONCILE_GRACE = 10.0  # seconds a device may run another package before a serve worker resends desired


def failover_rollout(
    work: Path, db: str, v1: Path, v2: Path, key: Path, *, devices: int = DEVICES, before_wave: bool = False
) -> dict[str, Any]:
    """Run the scenario (see the module doc); returns its figures.

    ``before_wave``: kill the node just before the last wave's desired states are published instead of just
    after (small packages install within ~50 ms of the publish, so only then do devices converge after the
    kill: through the surviving nodes' retained view, or the reconciler).
    """
    scenario = _Scenario(work, db, v1, key, devices)
    scenario.kill_on = "wave 1: healthy" if before_wave else "wave 2"
    try:
        scenario.start()
        res = scenario.res
        res["v1"] = scenario.roll_out(v1, ["100%"])
        res["v2"] = scenario.roll_out(v2, ["10%", "100%"], scenario.kill_at_last_wave)
        scenario.after_rollout(v2)
        scenario.drain()
        return res
    finally:
        scenario.stop()


class _Scenario:
    def __init__(self, work: Path, db: str, v1: Path, key: Path, devices: int) -> None:
        from edgekit.fleet.deploy import release
        from edgekit.fleet.ingest import Ingest
        from edgekit.fleet.natscluster import NatsCluster
        from edgekit.fleet.rollout import Policy
        from edgekit.fleet.serve import PackageServer
        from edgekit.fleet.sim import Simulation
        from edgekit.fleet.store import Store

        self.repo, self.key, self.devices = work / "repo", key, devices
        self.profile = release(v1, self.repo).profile
        self.cluster = NatsCluster(work / "nats", size=3)
        self.cluster.start()
        nats, urls = self.cluster.nats_urls, self.cluster.mqtt_urls
        self.store = Store(db)
        # both workers run the reconciler; the store's lease lets one resend at a time
        self.workers = [
            PackageServer(self.repo, ",".join(urls[i:] + urls[:i]), ingest=Ingest(Store(db)),
                          nats=",".join(nats[i:] + nats[:i]), reconcile_grace=RECONCILE_GRACE)
            for i in (0, 1)
        ]  # fmt: skip
        self.sim = Simulation(",".join(urls), "lab", devices, profile=self.profile, follow=work / "sim")
        self.stopping = threading.Event()
        self.sender = threading.Thread(
            target=lambda: self.sim.run(messages=10**9, rate=RATE, stop=self.stopping), daemon=True
        )
        self.res: dict[str, Any] = {"devices": devices, "nodes": 3, "workers": 2, "rate_hz": RATE}
        self.killed: dict[str, float | None] = {}
        self.reconnects: threading.Thread | None = None
        self.policy = Policy(min_soak=2.0, install_timeout=120.0, max_p95_regression=1.0, poll=0.25)

    def start(self) -> None:
        for w in self.workers:
            w.start()
        self.sim.start()
        deadline = time.monotonic() + 60
        while len(self.store.group("lab", self.profile)) < self.devices and time.monotonic() < deadline:
            time.sleep(0.2)
        self.sender.start()

    kill_on = "wave 2"  # the log line that triggers the kill (see failover_rollout)

    def kill_at_last_wave(self, message: str) -> None:
        told = "told to install" in message or self.kill_on != "wave 2"
        if message.startswith(self.kill_on) and told and not self.killed:
            self.res["on_killed_node"] = sum(1 for d in self.sim.devices if d.port == self.cluster.nodes[0].mqtt_port)
            self.killed["t"] = t = time.monotonic()
            self.cluster.kill(0)
            # watched from the kill on, not after the rollout: a rollout longer than the watch read as "never"
            self.reconnects = threading.Thread(target=lambda: self.killed.update(reconnect_s=_all_connected(
                self.sim, t)), daemon=True, name="failover-reconnects")  # fmt: skip
            self.reconnects.start()

    def roll_out(self, package: Path, waves: list[str], on_log: Any = lambda _m: None) -> dict[str, Any]:
        from edgekit.fleet import rollout
        from edgekit.fleet.deploy import release

        doc = rollout.plan(self.store, "lab", package, self.repo, self.profile, waves, self.policy)
        # the host's own connection fails over as well: node 0 is first in its list
        runner = rollout.Runner(self.store, ",".join(self.cluster.mqtt_urls), doc, key=self.key,
                                repository=self.repo, on_log=on_log)  # fmt: skip
        t0 = time.monotonic()
        version = release(package, self.repo).desired.version
        watch = _Convergence(self.sim, version)
        doc = runner.run()
        out = {"status": doc["status"], "seconds": time.monotonic() - t0, "log": [e["message"] for e in doc["log"]]}
        out["running"] = self.sim.running(version)
        if self.killed:  # per device: seconds from the kill until it ran the new version
            out["converged_after_kill_s"] = watch.since(self.killed["t"])
        watch.stop()
        return out

    def after_rollout(self, v2: Path) -> None:
        """Reconnection after the kill, and the device states once they settle (a will can still arrive after
        the reconnect: a connection the cluster found dead late; the device then says "online" again)."""
        from edgekit.fleet.deploy import release

        res, version = self.res, release(v2, self.repo).desired.version
        res["killed_node"] = "n0" if self.killed else None
        if self.killed and self.reconnects is not None:
            self.reconnects.join(65)
            res["reconnect_s"] = self.killed.get("reconnect_s")
            res["still_on_killed_node"] = sum(1 for d in self.sim.devices if d.port == self.cluster.nodes[0].mqtt_port)
        t_states = time.monotonic()
        while True:
            res["states"] = sorted({(r["status"], r["package_version"]) for r in self.store.group("lab", self.profile)})
            if res["states"] == [("online", version)] or time.monotonic() - t_states > 60:
                break
            time.sleep(0.2)
        res["states_settled_s"] = round(time.monotonic() - t_states, 1)

    def drain(self) -> None:
        """Stop the telemetry and count what the store got of what the cluster acknowledged."""
        res = self.res
        self.stopping.set()
        self.sender.join(30)
        res["all_acked"] = self.sim.wait_acked(60)
        res["unacked"] = sum(d.unacked for d in self.sim.devices)
        res["sent"] = self.sim.sent
        deadline = time.monotonic() + 60
        while _telemetry(self.store) < res["sent"] and time.monotonic() < deadline:
            time.sleep(0.2)
        res["stored"] = _telemetry(self.store)
        res["lost"] = res["sent"] - res["stored"]
        res["duplicates_skipped"] = sum(w.ingest.stats.duplicates for w in self.workers)
        res["chunks_served"] = [w.served for w in self.workers]
        res["installs"] = sum(d.installs for d in self.sim.devices)
        res["desired_resends"] = sum(w.reconciler.stats.resends for w in self.workers)
        res["resent_by_workers"] = sum(1 for w in self.workers if w.reconciler.stats.resends)

    def stop(self) -> None:
        self.stopping.set()
        self.sim.stop()
        for w in self.workers:
            w.stop()
        self.store.close()
        self.cluster.stop()


class _Convergence:
    """When each simulated device first runs ``version`` (polled every 50 ms while a rollout runs)."""

    def __init__(self, sim: Any, version: str) -> None:
        self.sim, self.version, self.at = sim, version, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for d in self.sim.devices:
                if d.device not in self.at and (d.package or {}).get("version") == self.version:
                    self.at[d.device] = now

    def since(self, t0: float) -> dict[str, Any]:
        after = sorted(t - t0 for t in self.at.values() if t >= t0)
        if not after:
            return {"devices": 0}
        return {"devices": len(after), "p50": round(statistics.median(after), 2), "max": round(after[-1], 2)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


def _telemetry(store: Any) -> int:
    return store.query("SELECT COUNT(*) AS n FROM telemetry WHERE fleet = 'lab'")[0]["n"]


def _all_connected(sim: Any, since: float) -> float | None:
    """Seconds from the kill until every simulated device's client is connected again (None: not in 60 s)."""
    deadline = since + 60
    while time.monotonic() < deadline:
        if all(d.connected for d in sim.devices):
            return time.monotonic() - since
        time.sleep(0.05)
    return None
