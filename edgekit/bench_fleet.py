"""Bench section ``fleet``: telemetry ingest from simulated devices into SQLite and PostgreSQL.

``edgekit serve --db …`` runs as its own process (as deployed) on a local Mosquitto; N simulated devices
(real paho clients, ``edgekit sim agents --messages M`` processes of at most 250) publish M QoS1
telemetry messages each as fast as paho takes them.
The rate is end to end: from the first publish until the store holds every message (polled with COUNT(*)),
so it includes the devices' publishing, the broker and serve's batched writes. Lost = sent − stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.bench import header, log

RUNS = ((200, 50), (500, 20))


def _postgres() -> str | None:
    try:
        import psycopg

        url = "postgresql://postgres@127.0.0.1:5432/test"
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("DROP SCHEMA IF EXISTS edgekit_bench CASCADE")
            conn.execute("CREATE SCHEMA edgekit_bench")
        return f"{url}?options=-csearch_path%3Dedgekit_bench"
    except Exception:
        return None


def _one(tmp: Path, url: str, db: str, devices: int, messages: int) -> dict[str, Any]:
    from edgekit.cli.sim import MAX_PER_PROCESS
    from edgekit.fleet.store import Store

    edgekit = Path(sys.executable).with_name("edgekit")
    serve = subprocess.Popen([str(edgekit), "serve", "--packages", str(tmp), "--broker", url, "--db", db],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3.0)  # connected and subscribed
        store = Store(db)
        fleet = f"bench{devices}"
        expected = devices * messages
        # at most MAX_PER_PROCESS simulated devices per process (paho's select() limit): one process per shard
        shards = [min(MAX_PER_PROCESS, devices - i) for i in range(0, devices, MAX_PER_PROCESS)]
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    str(edgekit),
                    "sim",
                    "agents",
                    str(n),
                    "--broker",
                    url,
                    "--fleet",
                    fleet,
                    "--prefix",
                    f"d{k}",
                    "--messages",
                    str(messages),
                    "--format",
                    "json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for k, n in enumerate(shards)
        ]
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline:
            stored = store.query("SELECT COUNT(*) AS n FROM telemetry WHERE fleet = ?", (fleet,))[0]["n"]
            if stored >= expected:
                break
            time.sleep(0.02)
        total_s = time.perf_counter() - t0
        results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        publish_s = max(r["seconds"] for r in results)
        acked = all(r["all_acknowledged"] for r in results)
        store.close()
        rate = stored / total_s
        return {"devices": devices, "messages": expected, "stored": stored, "lost": expected - stored,
                "publish_s": publish_s, "total_s": total_s, "msg_per_s": rate, "all_acked": acked}  # fmt: skip
    finally:
        serve.terminate()
        serve.wait(30)


def run() -> dict[str, Any]:
    from edgekit.fleet.broker import LocalBroker

    res: dict[str, Any] = {"ingest": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = LocalBroker(tmp / "broker")
        broker.start()
        try:
            engines = {"sqlite": f"sqlite:///{tmp / 'fleet.db'}"}
            pg = _postgres()
            if pg:
                engines["postgresql"] = pg
            else:
                res["postgresql"] = "unavailable (nothing on 127.0.0.1:5432)"
            for engine, db in engines.items():
                for devices, messages in RUNS:
                    log(f"fleet ingest: {engine}, {devices} devices x {messages}")
                    res["ingest"].append({"engine": engine, **_one(tmp, broker.url, db, devices, messages)})
        finally:
            broker.stop()
    return res


def render(res: dict[str, Any]) -> list[str]:
    lines = [
        "## Fleet ingest (issue 6)",
        "",
        header(res),
        "`edgekit serve --db` in its own process on a local Mosquitto; simulated devices (real paho clients, one",
        "connection each) publish QoS1 telemetry as fast as they can. msg/s is end to end: first publish until",
        "`COUNT(*)` in the store reaches the number sent. Lost = sent − stored.",
        "",
        "| store | devices | messages | stored | lost | publish s | total s | msg/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["ingest"]:
        lines.append(f"| {r['engine']} | {r['devices']} | {r['messages']} | {r['stored']} | {r['lost']} | "
                     f"{r['publish_s']:.2f} | {r['total_s']:.2f} | {r['msg_per_s']:.0f} |")  # fmt: skip
    if "postgresql" in res:
        lines += ["", f"PostgreSQL: {res['postgresql']}."]
    return lines
