"""Bench section ``devicerank``: host vs device ranking of the same ``--auto`` candidates.

A real agent runs in its own process pinned to one core with one thread (``taskset -c 0``; a board with
fewer, slower cores than the host), behind Mosquitto and ``edgekit serve``; ``edgekit package --auto
--measure-on`` builds the candidates once, times them on the host (interleaved, the host's threads) and on
the agent (``bench/request``). The table shows both figures per candidate and what each ranking would
choose: the rule is the same (``edgekit.auto.choose``), only the numbers differ.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.bench import header, log

MODELS = ("digits_cnn", "recommender")


def _agent(work: Path, url: str, pub: Path) -> subprocess.Popen:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    return subprocess.Popen(
        [*pin, sys.executable, "-m", "edgekit_agent", "run", "--broker", url, "--fleet", "bench", "--device-id",
         "board-1", "--profile", "x86-64-generic", "--data-dir", str(work / "board"), "--trust", str(pub),
         "--threads", "1", "--telemetry-interval", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _on_host(rows: list[dict[str, Any]], cls: Any) -> list[Any]:
    """The candidates as the host measured them (the device's refusals undone), for the same rule."""
    out = []
    for r in rows:
        c = cls(r["name"], r["runtime"], r["precision"], r["metric"], r["performance_drop"],
                r["host_latency_ms"] or r["latency_ms"], r["size_bytes"], r["status"], r["reason"])  # fmt: skip
        if r["host_latency_ms"] is not None:  # measured on the device too: it was within tolerance on the host
            c.status, c.latency_interval_ms = "ok", tuple(r["host_latency_interval_ms"] or ()) or None
        c.steps = [None]
        out.append(c)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from edgekit.auto import CandidateResult, choose
    from edgekit.build import run_package
    from edgekit.edgepkg import Signing
    from edgekit.fleet.broker import LocalBroker
    from edgekit.fleet.ingest import Ingest
    from edgekit.fleet.serve import PackageServer
    from edgekit.fleet.store import Store
    from edgekit.keys import init_keys
    from edgekit.measure import MeasureOn

    out: dict[str, Any] = {"pinned": bool(shutil.which("taskset")), "agent_threads": 1, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgekit-devicerank-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        keys = init_keys(work / "keys", name="bench")
        repo, db = work / "repo", f"sqlite:///{work / 'fleet.db'}"
        repo.mkdir()
        server = PackageServer(repo, broker.url, ingest=Ingest(Store(db)))
        server.start()
        agent = _agent(work, broker.url, keys.public_path)
        try:
            store, deadline = Store(db), time.monotonic() + 60
            while not any(d["status"] == "online" for d in store.devices("bench")) and time.monotonic() < deadline:
                time.sleep(0.2)
            for model in MODELS[:1] if quick else MODELS:
                log(f"devicerank: {model}")
                measure = MeasureOn(["board-1"], broker.url, "bench", db, repo, runs=100 if quick else 300)
                result = run_package(model, profile="x86-64-generic", auto=True, out=work / f"out-{model}",
                                     sign=Signing(key=keys.private_path, version="1"), measure_on=measure)  # fmt: skip
                rows = result.candidates or []
                host_choice = choose(_on_host(rows, CandidateResult))
                out["models"][model] = {
                    "device_choice": result.chosen,
                    "host_choice": host_choice.name if host_choice else None,
                    "rows": [{k: r.get(k) for k in ("name", "precision", "status", "latency_ms", "latency_interval_ms",
                                                     "host_latency_ms", "measured_on", "size_bytes")} for r in rows],
                }  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(10)
            server.stop()
            broker.stop()
    return out


def render(res: dict[str, Any]) -> list[str]:
    lines = [
        "## Host vs device ranking (`edgekit package --auto --measure-on`)",
        "",
        header(res),
        "",
        "The same candidates, built once: p50 on the host (interleaved, the profile's threads) and on a real",
        f"agent in its own process ({'pinned to one core, ' if res['pinned'] else ''}{res['agent_threads']} "
        "thread), asked over MQTT with `bench/request`. `--measure-on` ranks by the device column; the host",
        "column's choice is the same rule (`edgekit.auto.choose`) applied to the host's medians and their",
        "intervals (ties go to the smaller package).",
    ]
    for model, m in res["models"].items():
        lines += ["", f"**{model}**: chosen on the device `{m['device_choice']}`, on the host `{m['host_choice']}`",
                  "", "| candidate | precision | host p50 ms | device p50 ms (95 % interval) | size | status |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in m["rows"]:
            dev = "-" if not r["measured_on"] else (f"{r['latency_ms']:.3f} ({r['latency_interval_ms'][0]:.3f}-"
                                                    f"{r['latency_interval_ms'][1]:.3f})")  # fmt: skip
            host = "-" if r["host_latency_ms"] is None else f"{r['host_latency_ms']:.3f}"
            size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1024:.0f} kB"
            lines.append(f"| {r['name']} | {r['precision']} | {host} | {dev} | {size} | {r['status']} |")
    return lines
