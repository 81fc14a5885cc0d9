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
import uuid
from pathlib import Path
from typing import Any

from edgekit.bench import header, log

RUNS = ((200, 50), (500, 20))
DRAIN = (200, 150)  # 30,000 messages held by the broker, then drained by serve alone


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


def _serve(
    tmp: Path, url: str, db: str, session: str | None = None, settle: float = 3.0, share: str | None = None
) -> subprocess.Popen:
    edgekit = Path(sys.executable).with_name("edgekit")
    extra = (["--session", session] if session else []) + (["--share", share] if share else [])
    proc = subprocess.Popen([str(edgekit), "serve", "--packages", str(tmp), "--broker", url, "--db", db, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(settle)  # connected and subscribed
    return proc


def _publish(url: str, fleet: str, devices: int, messages: int) -> list[subprocess.Popen]:
    """At most MAX_PER_PROCESS simulated devices per process (paho's select() limit): one process per shard."""
    from edgekit.fleet.sim import MAX_PER_PROCESS

    edgekit = Path(sys.executable).with_name("edgekit")
    shards = [min(MAX_PER_PROCESS, devices - i) for i in range(0, devices, MAX_PER_PROCESS)]
    procs = []
    for k, n in enumerate(shards):
        cmd = [str(edgekit), "sim", "agents", str(n), "--broker", url, "--fleet", fleet, "--prefix", f"d{k}",
               "--messages", str(messages), "--format", "json"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> tuple[float, bool]:
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    return max(r["seconds"] for r in results), all(r["all_acknowledged"] for r in results)


def _count(store: Any, fleet: str) -> int:
    return store.query("SELECT COUNT(*) AS n FROM telemetry WHERE fleet = ?", (fleet,))[0]["n"]


def _await_drain(store: Any, fleet: str, expected: int, *, timeout: float) -> tuple[int, int, float]:
    """(stored, stored before the clock started, seconds) of a drain, timed from the first stored message
    on: serve's start-up (imports, connect) is not ingest."""
    deadline = time.monotonic() + timeout
    n0, t0 = _count(store, fleet), time.perf_counter()
    stored = n0
    while time.monotonic() < deadline and stored < expected:
        time.sleep(0.02)
        stored = _count(store, fleet)
        if n0 == 0 and stored > 0:
            n0, t0 = stored, time.perf_counter()
    return stored, n0, time.perf_counter() - t0


def _one(tmp: Path, url: str, db: str, devices: int, messages: int) -> dict[str, Any]:
    from edgekit.fleet.store import Store

    serve = _serve(tmp, url, db)
    try:
        store = Store(db)
        fleet = f"bench{devices}"
        expected = devices * messages
        t0 = time.perf_counter()
        procs = _publish(url, fleet, devices, messages)
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline:
            stored = _count(store, fleet)
            if stored >= expected:
                break
            time.sleep(0.02)
        total_s = time.perf_counter() - t0
        publish_s, acked = _finish(procs)
        store.close()
        rate = stored / total_s
        return {"devices": devices, "messages": expected, "stored": stored, "lost": expected - stored,
                "publish_s": publish_s, "total_s": total_s, "msg_per_s": rate, "all_acked": acked}  # fmt: skip
    finally:
        serve.terminate()
        serve.wait(30)


def _drain(tmp: Path, url: str, db: str, devices: int, messages: int, workers: int = 1) -> dict[str, Any]:
    """serve's own ingest rate: the broker holds a backlog for serve's persistent session(s) (``--session``),
    published while serve was down; serve then drains it with no publisher competing for the 2 cores. With
    several workers (``--share``), the broker splits the backlog between their sessions."""
    from edgekit.fleet import mqtt
    from edgekit.fleet.store import Store

    fleet = f"drain{devices}w{workers}{uuid.uuid4().hex[:4]}"  # sessions from an earlier run must not mix in
    share = fleet if workers > 1 else None
    sessions = [f"{fleet}-{i}" for i in range(workers)]
    first = [_serve(tmp, url, db, s, settle=0.0, share=share) for s in sessions]  # sessions + subscriptions
    time.sleep(3.0)
    for proc in first:
        proc.terminate()
        proc.wait(30)
    publish_s, acked = _finish(_publish(url, fleet, devices, messages))
    expected = devices * messages
    store = Store(db)
    serves = [_serve(tmp, url, db, s, settle=0.0, share=share) for s in sessions]
    try:
        stored, n0, drain_s = _await_drain(store, fleet, expected, timeout=120)
        return {"devices": devices, "messages": expected, "stored": stored, "lost": expected - stored,
                "workers": workers, "publish_s": publish_s, "all_acked": acked, "drain_s": drain_s,
                "msg_per_s": (stored - n0) / drain_s if drain_s > 0 else 0.0}  # fmt: skip
    finally:
        store.close()
        for proc in serves:
            proc.terminate()
            proc.wait(30)
        for name in sessions:
            mqtt.end_session(url, "serve", name)


def run(*, quick: bool = False) -> dict[str, Any]:
    """Quick: 200 devices only and one drain with one worker, on each store."""
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
                for devices, messages in RUNS[:1] if quick else RUNS:
                    log(f"fleet ingest: {engine}, {devices} devices x {messages}")
                    res["ingest"].append({"engine": engine, **_one(tmp, broker.url, db, devices, messages)})
                for workers in (1,) if quick else (1, 2):
                    log(f"fleet ingest: {engine}, {workers} serve worker(s) draining {DRAIN[0]} x {DRAIN[1]}")
                    res.setdefault("drain", []).append(
                        {"engine": engine, **_drain(tmp, broker.url, db, *DRAIN, workers=workers)}
                    )
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
    if res.get("drain"):
        lines += [
            "",
            "serve alone (what one ingest worker can take): the broker holds a backlog for `edgekit serve",
            "--session`, published while serve was down; serve is restarted and drains it with no publisher on",
            "the cores. msg/s from the first stored message until the last. Two workers share the load through a",
            "shared subscription (`edgekit serve --share G`, each with its own `--session`).",
            "",
            "| store | serve workers | messages | stored | lost | drain s | msg/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["drain"]:
            lines.append(f"| {r['engine']} | {r['workers']} | {r['messages']} | {r['stored']} | {r['lost']} | "
                         f"{r['drain_s']:.2f} | {r['msg_per_s']:.0f} |")  # fmt: skip
    if "postgresql" in res:
        lines += ["", f"PostgreSQL: {res['postgresql']}."]
    return lines
