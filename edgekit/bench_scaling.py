"""Bench section ``scaling`` (issue 9): a 3-node NATS cluster speaking MQTT, serve workers, PostgreSQL.

1. **Failover rollout** (:func:`failover_rollout`, also run by ``tests/edgekit/fleet/test_cluster.py``):
   100 simulated devices spread over the 3 nodes install v1, then v2 in waves ``10%,100%``; node 0 (a third
   of the devices, and the first NATS URL of worker 0) is killed with ``kill -9`` when the last wave starts,
   while every device sends QoS1 telemetry at 2 Hz. Figures: rollout time, time until every device is
   connected again, telemetry sent / stored / lost.
2. **Worker throughput**: what 1 and 2 ``edgekit serve`` processes drain from a backlog the broker holds
   for them, on Mosquitto (shared subscription + persistent sessions, ``bench_fleet._drain``) and on the NATS
   cluster (one durable JetStream consumer), both into PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.bench import header, log

DEVICES = 100
RATE = 2.0  # telemetry messages per second per device during the rollouts
RECONCILE_GRACE = 10.0  # seconds a device may run another package before a serve worker resends desired
DRAIN = (200, 150)  # devices x messages held for the workers, as in the fleet section


def failover_rollout(work: Path, db: str, v1: Path, v2: Path, key: Path, *, devices: int = DEVICES) -> dict[str, Any]:
    """The issue's scenario; returns its figures (the caller asserts or reports them)."""
    from edgekit.fleet import rollout
    from edgekit.fleet.deploy import release
    from edgekit.fleet.ingest import Ingest
    from edgekit.fleet.natscluster import NatsCluster
    from edgekit.fleet.serve import PackageServer
    from edgekit.fleet.sim import Simulation
    from edgekit.fleet.store import Store

    repo = work / "repo"
    profile = release(v1, repo).profile
    cluster = NatsCluster(work / "nats", size=3)
    cluster.start()
    nats = cluster.nats_urls
    store = Store(db)
    mqtt_urls = cluster.mqtt_urls
    # both workers run the reconciler; the store's lease lets one resend at a time
    workers = [
        PackageServer(repo, ",".join(mqtt_urls[i:] + mqtt_urls[:i]), ingest=Ingest(Store(db)),
                      nats=",".join(nats[i:] + nats[:i]), reconcile_grace=RECONCILE_GRACE)
        for i in (0, 1)
    ]  # fmt: skip
    sim = Simulation(",".join(cluster.mqtt_urls), "lab", devices, profile=profile, follow=work / "sim")
    stop = threading.Event()
    sender = threading.Thread(target=lambda: sim.run(messages=10**9, rate=RATE, stop=stop), daemon=True)
    res: dict[str, Any] = {"devices": devices, "nodes": 3, "workers": 2, "rate_hz": RATE}
    killed: dict[str, float] = {}
    policy = rollout.Policy(min_soak=2.0, install_timeout=120.0, max_p95_regression=1.0, poll=0.25)

    def kill_at_last_wave(message: str) -> None:
        if message.startswith("wave 2") and "told to install" in message and not killed:
            res["on_killed_node"] = sum(1 for d in sim.devices if d.port == cluster.nodes[0].mqtt_port)
            killed["t"] = time.monotonic()
            cluster.kill(0)

    def roll_out(package: Path, waves: list[str], on_log: Any = lambda _m: None) -> dict[str, Any]:
        doc = rollout.plan(store, "lab", package, repo, profile, waves, policy)
        # the host's own connection fails over as well: node 0 is first in its list
        runner = rollout.Runner(store, ",".join(cluster.mqtt_urls), doc, key=key, repository=repo, on_log=on_log)
        t0 = time.monotonic()
        doc = runner.run()
        return {"status": doc["status"], "seconds": time.monotonic() - t0, "log": [e["message"] for e in doc["log"]]}

    try:
        for w in workers:
            w.start()
        sim.start()
        deadline = time.monotonic() + 60
        while len(store.group("lab", profile)) < devices and time.monotonic() < deadline:
            time.sleep(0.2)
        sender.start()
        res["v1"] = roll_out(v1, ["100%"])
        res["v1"]["running"] = sim.running(release(v1, repo).desired.version)
        res["v2"] = roll_out(v2, ["10%", "100%"], kill_at_last_wave)
        version = release(v2, repo).desired.version
        res["v2"]["running"] = sim.running(version)
        res["killed_node"] = "n0" if killed else None
        if killed:
            res["reconnect_s"] = _all_connected(sim, killed["t"])
            res["still_on_killed_node"] = sum(1 for d in sim.devices if d.port == cluster.nodes[0].mqtt_port)
        # A will can still arrive after the reconnect (a connection the cluster found dead late, or closed as
        # a duplicate client id); the device hears its own stale will and says "online" again. So the states
        # are read once they settle (60 s at most), and how long that took is reported with them.
        t_states = time.monotonic()
        while True:
            res["states"] = sorted({(r["status"], r["package_version"]) for r in store.group("lab", profile)})
            if res["states"] == [("online", version)] or time.monotonic() - t_states > 60:
                break
            time.sleep(0.2)
        res["states_settled_s"] = round(time.monotonic() - t_states, 1)
        stop.set()
        sender.join(30)
        res["all_acked"] = sim.wait_acked(60)
        res["sent"] = sim.sent
        deadline = time.monotonic() + 60
        while _telemetry(store) < res["sent"] and time.monotonic() < deadline:
            time.sleep(0.2)
        res["stored"] = _telemetry(store)
        res["lost"] = res["sent"] - res["stored"]
        res["duplicates_skipped"] = sum(w.ingest.stats.duplicates for w in workers)
        res["chunks_served"] = [w.served for w in workers]
        res["installs"] = sum(d.installs for d in sim.devices)
        res["desired_resends"] = sum(w.reconciler.stats.resends for w in workers)
        res["resent_by_workers"] = sum(1 for w in workers if w.reconciler.stats.resends)
    finally:
        stop.set()
        sim.stop()
        for w in workers:
            w.stop()
        store.close()
        cluster.stop()
    return res


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


def _nats_drain(tmp: Path, db: str, workers: int) -> dict[str, Any]:
    """NATS twin of ``bench_fleet._drain``: the durable consumer (created by a first start of the workers)
    keeps what devices publish while no worker runs; then ``workers`` processes drain it together."""
    from edgekit.bench_fleet import _await_drain, _finish, _publish
    from edgekit.fleet.natscluster import NatsCluster
    from edgekit.fleet.store import Store

    cluster = NatsCluster(tmp / f"nats-drain{workers}", size=3)
    cluster.start()
    edgekit = Path(sys.executable).with_name("edgekit")
    group = f"drain{workers}{uuid.uuid4().hex[:4]}"
    fleet = group

    def serve() -> subprocess.Popen:
        return subprocess.Popen(
            [str(edgekit), "serve", "--packages", str(tmp), "--db", db, "--share", group,
             "--nats", ",".join(cluster.nats_urls), "--broker", cluster.mqtt_urls[0]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    try:
        first = serve()  # creates the durable consumer
        time.sleep(4.0)
        first.terminate()
        first.wait(30)
        devices, messages = DRAIN
        publish_s, acked = _finish(_publish(",".join(cluster.mqtt_urls), fleet, devices, messages))
        expected = devices * messages
        store = Store(db)
        procs = [serve() for _ in range(workers)]
        try:
            stored, n0, drain_s = _await_drain(store, fleet, expected, timeout=180)
        finally:
            store.close()
            for proc in procs:
                proc.terminate()
                proc.wait(30)
        return {"engine": "postgresql", "broker": "nats (3 nodes, R3)", "workers": workers, "messages": expected,
                "stored": stored, "lost": expected - stored, "publish_s": publish_s, "all_acked": acked,
                "drain_s": drain_s, "msg_per_s": (stored - n0) / drain_s if drain_s > 0 else 0.0}  # fmt: skip
    finally:
        cluster.stop()


def _packages(tmp: Path) -> tuple[Path, Path, Path]:
    """digits_cnn packaged once, signed as v1 (counter 1) and v2 (counter 2)."""
    from edgekit.build import run_package
    from edgekit.edgepkg import Signing, write_edgepkg
    from edgekit.keys import init_keys

    keys = init_keys(tmp / "keys")
    recipes = Path(__file__).resolve().parent.parent / "models" / "recipes"
    result = run_package("digits_cnn", profile="x86-64-generic", recipe=recipes / "digits_int8_static.yaml",
                         out=tmp / "digits")  # fmt: skip
    out = []
    for counter, version in ((1, "v1"), (2, "v2")):
        signing = Signing(key=keys.private_path, version=version, counter=counter)
        out.append(write_edgepkg(Path(result.output_dir), tmp / f"{version}.edgepkg", signing).path)
    return out[0], out[1], keys.private_path


def run(*, quick: bool = False) -> dict[str, Any]:  # quick: not part of the quick run
    from edgekit.bench_fleet import _drain, _postgres
    from edgekit.fleet.broker import LocalBroker
    from edgekit.fleet.natscluster import nats_server_path

    if nats_server_path() is None:
        return {"unavailable": "nats-server is not installed"}
    db = _postgres()
    if db is None:
        return {"unavailable": "PostgreSQL is not reachable on 127.0.0.1:5432"}
    res: dict[str, Any] = {"drain": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log("scaling: packaging digits_cnn as v1 and v2")
        v1, v2, key = _packages(tmp)
        log(f"scaling: failover rollout, {DEVICES} devices on 3 NATS nodes, node 0 killed")
        res["failover"] = failover_rollout(tmp / "failover", db, v1, v2, key)
        broker = LocalBroker(tmp / "broker")
        broker.start()
        try:
            for workers in (1, 2):
                log(f"scaling: mosquitto, {workers} worker(s) draining {DRAIN[0]} x {DRAIN[1]}")
                r = _drain(tmp, broker.url, db, *DRAIN, workers=workers)
                res["drain"].append({**r, "engine": "postgresql", "broker": "mosquitto ($share)"})
        finally:
            broker.stop()
        for workers in (1, 2):
            log(f"scaling: nats, {workers} worker(s) draining {DRAIN[0]} x {DRAIN[1]}")
            res["drain"].append(_nats_drain(tmp, db, workers))
    return res


def render(res: dict[str, Any]) -> list[str]:
    lines = ["## Scaling out: NATS cluster, failover, serve workers (issue 9)", "", header(res), ""]
    if "unavailable" in res:
        return [*lines, f"Not measured: {res['unavailable']}."]
    f = res["failover"]
    reconnect = f.get("reconnect_s")
    lines += [
        f"**Failover rollout**: {f['devices']} simulated devices (real paho clients that pull packages through the",
        "chunk protocol) spread over 3 `nats-server` nodes, 2 `edgekit serve --nats` workers, PostgreSQL,",
        f"telemetry at {f['rate_hz']:g} Hz per device. Node 0 is killed (`kill -9`) when the rollout's last wave",
        "starts. See `edgekit.bench_scaling.failover_rollout` (the test runs the same function).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| v1 rollout (1 wave) | {f['v1']['status']}, {f['v1']['seconds']:.1f} s, {f['v1']['running']} devices |",
        f"| v2 rollout (10%, 100%; node killed) | {f['v2']['status']}, {f['v2']['seconds']:.1f} s, "
        f"{f['v2']['running']} devices |",
        f"| devices on the killed node / still there after | {f['on_killed_node']} / {f['still_on_killed_node']} |",
        f"| kill → every device connected again | {'n/a' if reconnect is None else f'{reconnect:.1f} s'} |",
        f"| device states after (settled in) | {', '.join(f'{s} {v}' for s, v in f['states'])} "
        f"({f.get('states_settled_s', 0):.1f} s) |",
        f"| telemetry sent / stored / lost | {f['sent']} / {f['stored']} / {f['lost']} |",
        f"| redelivered duplicates skipped by the store | {f['duplicates_skipped']} |",
        f"| chunks served by worker 0 / worker 1 | {f['chunks_served'][0]} / {f['chunks_served'][1]} |",
        "",
        "**Worker throughput**: a backlog of "
        f"{DRAIN[0]} devices x {DRAIN[1]} QoS1 telemetry messages is held by the broker while no worker runs",
        "(Mosquitto: persistent sessions behind a shared subscription; NATS: the durable JetStream consumer),",
        "then 1 or 2 `edgekit serve` processes drain it into PostgreSQL. msg/s from the first stored message.",
        "",
        "| broker | serve workers | messages | stored | lost | drain s | msg/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["drain"]:
        lines.append(f"| {r['broker']} | {r['workers']} | {r['messages']} | {r['stored']} | {r['lost']} | "
                     f"{r['drain_s']:.2f} | {r['msg_per_s']:.0f} |")  # fmt: skip
    return lines


if __name__ == "__main__":  # quick look without touching docs: python -m edgekit.bench_scaling
    print(json.dumps(run(), indent=1, default=str))
