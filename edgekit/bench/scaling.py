"""Bench section ``scaling`` (issue 9): a 3-node NATS cluster speaking MQTT, serve workers, PostgreSQL.

1. **Failover rollout** (``edgekit.fleet.failover``, also run by ``tests/edgekit/fleet/test_cluster.py``):
   100 simulated devices spread over the 3 nodes install v1, then v2 in waves ``10%,100%``; node 0 (a third
   of the devices, and the first NATS URL of worker 0) is killed with ``kill -9`` when the last wave starts,
   while every device sends QoS1 telemetry at 2 Hz. Figures: rollout time, time until every device is
   connected again, telemetry sent / stored / lost.
2. **Worker throughput**: what 1 and 2 ``edgekit serve`` processes drain from a backlog the broker holds
   for them, on Mosquitto (shared subscription + persistent sessions, ``edgekit.bench.fleet._drain``) and on the NATS
   cluster (one durable JetStream consumer), both into PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.bench import ROOT, header, log
from edgekit.fleet.failover import DEVICES, failover_rollout

DRAIN = (200, 150)  # devices x messages held for the workers, as in the fleet section


def _nats_drain(tmp: Path, db: str, workers: int) -> dict[str, Any]:
    """NATS twin of ``edgekit.bench.fleet._drain``: the durable consumer (created by a first start of the workers)
    keeps what devices publish while no worker runs; then ``workers`` processes drain it together."""
    from edgekit.bench.fleet import _await_drain, _finish, _publish
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
    recipes = ROOT / "models" / "recipes"
    result = run_package("digits_cnn", profile="x86-64-generic", recipe=recipes / "digits_int8_static.yaml",
                         out=tmp / "digits")  # fmt: skip
    out = []
    for counter, version in ((1, "v1"), (2, "v2")):
        signing = Signing(key=keys.private_path, version=version, counter=counter)
        out.append(write_edgepkg(Path(result.output_dir), tmp / f"{version}.edgepkg", signing).path)
    return out[0], out[1], keys.private_path


def run(*, quick: bool = False) -> dict[str, Any]:  # quick: not part of the quick run
    from edgekit.bench.fleet import _drain, _postgres
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


def _reconciler_rows(f: dict[str, Any]) -> list[str]:
    """Rows a run before the reconciler existed did not record."""
    rows = []
    converged = f["v2"].get("converged_after_kill_s")
    if converged and converged.get("devices"):
        rows.append(f"| devices running v2 after the kill: count, p50 / max seconds from the kill | "
                    f"{converged['devices']}, {converged['p50']:.1f} / {converged['max']:.1f} s |")  # fmt: skip
    if "desired_resends" in f:
        rows.append(f"| desired resent by the reconciler (workers that resent) | {f['desired_resends']} "
                    f"({f['resent_by_workers']}) |")  # fmt: skip
    return rows


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
        "starts. See `edgekit.fleet.failover` (the test runs the same function).",
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
        *_reconciler_rows(f),
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


if __name__ == "__main__":  # quick look without touching docs: python -m edgekit.bench.scaling
    print(json.dumps(run(), indent=1, default=str))
