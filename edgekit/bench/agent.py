"""Bench section ``agent``: what the device agent costs, against the bare runtime and a raw MQTT loop.

1. Latency: the digits and recommender INT8 models (ONNX Runtime) served by a running agent (connected to a
   local Mosquitto, all its threads up) — ``agent.model.predict``, the call every ``infer/request`` makes —
   against a bare ``InferenceSession.run`` on the same file, interleaved in rounds in one process.
   The request handling around it (JSON/base64 decode + encode) and the MQTT round trip are reported apart.
2. Idle RSS: ``edgekit-agent run`` with the digits package installed and loaded, against a bare Python
   process that imports ONNX Runtime and runs the same model once.
3. Transfer: a 25 MB package pulled by the agent (256 KiB chunks, 8 in flight) against a raw paho loop
   publishing the same bytes in the same chunks (QoS1) to a subscriber on the same broker.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench import ROOT, header, log
from edgekit.fleet.serve import PackageServer

CHUNK = 256 * 1024
ROUNDS = 5
WINDOWS = (8, 16, 32, 64)


def _package(tmp: Path, model: str, recipe: str, key: Path, out: Path, *, pad: int = 0) -> Path:
    from edgekit.build import run_package
    from edgekit.edgepkg import Signing, write_edgepkg

    recipes = ROOT / "models" / "recipes"
    result = run_package(model, profile="x86-64-generic", recipe=recipes / recipe, out=tmp / model)
    if pad:
        source = Path(result.output_dir)
        (source / "pad.bin").write_bytes(np.random.default_rng(0).bytes(pad))
        report = json.loads((source / "report.json").read_text())
        report["package"]["files"] = sorted([*report["package"]["files"], "pad.bin"])
        (source / "report.json").write_text(json.dumps(report))
    return write_edgepkg(Path(result.output_dir), out, Signing(key=key, counter=1 if not pad else 2)).path


def _desired(path: Path, counter: int) -> Any:
    from edgekit_agent.protocol import Desired

    from edgekit.fleet.serve import sha256_file

    return Desired(path.stem, str(counter), sha256_file(path), counter, path.stat().st_size)


def _publish_desired(url: str, desired: Any, device: str) -> None:
    from edgekit.fleet.deploy import publish_desired

    publish_desired(url, "bench", [device], desired)


def _wait(predicate: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"bench: timed out waiting for {what}")


def _interleaved(fns: dict[str, Any], rounds: int = 30, per_round: int = 200) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            # Let the previous contender's ONNX Runtime pool stop spinning: with 2 intra-op threads on 2 cores
            # a still-spinning pool slowed whichever session ran next by up to 30 % (measured on a Xeon).
            time.sleep(0.05)
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _raw_loop(url: str, data: bytes) -> float:
    """Seconds for a raw paho publisher to deliver ``data`` in CHUNK pieces (QoS1) to a subscriber."""
    from edgekit.fleet import mqtt

    name = f"bench/raw/{uuid.uuid4().hex[:6]}"
    got = {"bytes": 0}
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got["bytes"] += len(msg.payload)
        if got["bytes"] >= len(data):
            done.set()

    sub, pub = mqtt.client("bench-sub"), mqtt.client("bench-pub")
    sub.on_message = on_message
    pub.max_queued_messages_set(0)  # unbounded: the loop must not block on paho's own queue
    mqtt.connect(sub, url)
    sub.subscribe(name, qos=1)
    mqtt.connect(pub, url)
    time.sleep(0.3)
    t0 = time.perf_counter()
    for offset in range(0, len(data), CHUNK):
        pub.publish(name, data[offset : offset + CHUNK], qos=1)
    done.wait(120)
    seconds = time.perf_counter() - t0
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
    return seconds


def run(*, quick: bool = False) -> dict[str, Any]:
    """Quick: a 5 MB transfer in 3 rounds, one window; the rest as in the full run."""
    from edgekit.fleet.broker import LocalBroker
    from edgekit.keys import init_keys

    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keys = init_keys(tmp / "keys")
        repo = tmp / "repo"
        repo.mkdir()
        broker = LocalBroker(tmp / "broker")
        broker.start()
        server = PackageServer(repo, broker.url)
        server.start()
        try:
            res["latency"] = {}
            for model, recipe in (
                ("digits_cnn", "digits_int8_static.yaml"),
                ("recommender", "recommender_int8_dynamic.yaml"),
            ):
                log(f"agent latency: {model}")
                pkg = _package(tmp, model, recipe, keys.private_path, repo / f"{model}.edgepkg")
                res["latency"][model] = _latency(tmp, broker.url, pkg, keys.public_path)
            log("agent idle RSS")
            res["rss"] = _rss(tmp, broker.url, repo / "digits_cnn.edgepkg", keys.public_path)
            pad = 5_000_000 if quick else 25_000_000
            log(f"transfer of a {pad // 1_000_000} MB package")
            big = _package(tmp, "digits_cnn", "digits_int8_static.yaml", keys.private_path, repo / "big.edgepkg",
                           pad=pad)  # fmt: skip
            res["transfer"] = _transfer(
                tmp,
                broker.url,
                big,
                keys.public_path,
                rounds=3 if quick else ROUNDS,
                windows=(16,) if quick else WINDOWS,
            )
            server.stop()
            server = None  # the resume run brings its own server: two would both answer
            log("resume after kill -9 at half")
            res["resume"] = _resume(tmp, repo, broker.url, big, keys.public_path)
        finally:
            if server is not None:
                server.stop()
            broker.stop()
    return res


def _latency(tmp: Path, url: str, pkg: Path, pub: Path) -> dict[str, Any]:
    import onnxruntime as ort
    from edgekit_agent.agent import Agent, AgentConfig
    from edgekit_agent.inference import encode, handle
    from edgekit_agent.protocol import dumps

    data = tmp / f"data-{pkg.stem}"  # one device id per model: a run never sees another run's desired
    agent = Agent(AgentConfig(broker=url, fleet="bench", device_id=data.name, profile="x86-64-generic",
                              data_dir=data, trust=[pub], threads=2, telemetry_interval=1.0))  # fmt: skip
    agent.start()
    try:
        _publish_desired(url, _desired(pkg, 1), agent.cfg.device_id)
        _wait(lambda: agent.model is not None and agent.model.manifest.name == pkg.stem, "install")
        model = agent.model
        m = model.manifest
        feed = {n: np.load(model.directory / f, allow_pickle=False) for n, f in m.sample.inputs}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 2, 1, 3
        bare = ort.InferenceSession(str(model.directory / m.entry), opts, providers=["CPUExecutionProvider"])
        request = dumps({"id": "b", "inputs": {n: encode(a) for n, a in feed.items()}})
        # a second bare session on the same file: how far two sessions differ with no agent at all (the noise
        # floor the overhead is read against; each session has its own arena and thread pool)
        bare2 = ort.InferenceSession(str(model.directory / m.entry), opts, providers=["CPUExecutionProvider"])
        p50 = _interleaved({
            "bare_ort": lambda: bare.run(None, feed),
            "bare_ort_2": lambda: bare2.run(None, feed),
            "agent_predict": lambda: model.predict(feed),
            "agent_request": lambda: handle(request, model, lambda _ms: None),
        })  # fmt: skip
        bare_p50 = min(p50["bare_ort"], p50["bare_ort_2"])
        return {**p50, "overhead_pct": 100 * (p50["agent_predict"] / bare_p50 - 1),
                "noise_pct": 100 * abs(p50["bare_ort_2"] / p50["bare_ort"] - 1),
                "request_overhead_pct": 100 * (p50["agent_request"] / bare_p50 - 1)}  # fmt: skip
    finally:
        agent.stop()


def _rss(tmp: Path, url: str, pkg: Path, pub: Path) -> dict[str, Any]:
    data = tmp / "data-rss"
    cmd = [sys.executable, "-m", "edgekit_agent.cli", "run", "--broker", url, "--fleet", "bench", "--device-id", "rss",
           "--profile", "x86-64-generic", "--data-dir", str(data), "--trust", str(pub), "--threads", "2"]  # fmt: skip
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _publish_desired(url, _desired(pkg, 1), "rss")
        _wait(lambda: (data / "current").exists(), "the agent to install")
        time.sleep(3)  # idle: loaded, smoke-tested, waiting for requests
        agent_rss = _rss_of(agent.pid)
    finally:
        agent.terminate()
        agent.wait(10)
    model = next((data / "current").resolve().glob("model.onnx"))
    script = (
        "import sys, time, numpy as np, onnxruntime as ort\n"
        "o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.log_severity_level = 3\n"
        f"s = ort.InferenceSession({str(model)!r}, o, providers=['CPUExecutionProvider'])\n"
        f"s.run(None, {{'image': np.load({str(model.parent / 'sample' / 'input_0.npy')!r})}})\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    bare = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        bare.stdout.readline()
        time.sleep(1)
        bare_rss = _rss_of(bare.pid)
    finally:
        bare.kill()
        bare.wait()
    return {"agent_rss": agent_rss, "bare_rss": bare_rss, "delta_mb": (agent_rss - bare_rss) / 2**20,
            "startup_s": [_startup(url, data, cmd) for _ in range(ROUNDS)]}  # fmt: skip


def _startup(url: str, data: Path, cmd: list[str]) -> float:
    """Seconds from spawning ``edgekit-agent run`` (a package already installed) to its first inference answer.

    A request goes out every 10 ms from the moment of the spawn; the first answer without an error ends it.
    """
    from edgekit_agent.inference import encode
    from edgekit_agent.protocol import dumps, topic

    from edgekit.fleet import mqtt

    sample = np.load(next((data / "current").resolve().glob("sample/input_0.npy")))
    request = dumps({"id": "s", "inputs": {"image": encode(sample)}})
    seen: dict[str, float] = {}
    client = mqtt.client("bench-startup")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if not json.loads(msg.payload).get("error"):
            seen.setdefault("first_inference_s", time.perf_counter())

    client.on_message = on_message
    mqtt.connect(client, url)
    client.subscribe(topic("bench", "rss", "infer/response"), qos=1)
    time.sleep(0.3)
    t0 = time.perf_counter()
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = t0 + 60
        while "first_inference_s" not in seen and time.perf_counter() < deadline:
            client.publish(topic("bench", "rss", "infer/request"), request, qos=0)
            time.sleep(0.01)
    finally:
        agent.terminate()
        agent.wait(10)
        client.disconnect()
        client.loop_stop()
    if "first_inference_s" not in seen:
        raise RuntimeError("bench: the restarted agent never answered an inference request")
    return seen["first_inference_s"] - t0


class _Device:
    """``edgekit-agent run`` as its own process (a device is not the server's process) and the events it reports."""

    def __init__(self, url: str, pub: Path, data: Path, window: int = 32) -> None:
        from edgekit_agent.protocol import topic

        from edgekit.fleet import mqtt

        self.events: list[dict[str, Any]] = []
        self.watcher = mqtt.client("bench-watch")
        self.watcher.on_message = lambda _c, _u, msg: self.events.append(json.loads(msg.payload))
        mqtt.connect(self.watcher, url)
        self.watcher.subscribe(topic("bench", data.name, "events"), qos=1)
        cmd = [sys.executable, "-m", "edgekit_agent.cli", "run", "--broker", url, "--fleet", "bench",
               "--device-id", data.name, "--profile", "x86-64-generic", "--data-dir", str(data), "--trust", str(pub),
               "--chunk-size", str(CHUNK), "--window", str(window)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def download(self) -> dict[str, Any]:
        return _wait(lambda: next((e for e in self.events if e.get("kind") == "download"), None), "download")

    def close(self, *, kill: bool = False) -> None:
        self.proc.kill() if kill else self.proc.terminate()
        self.proc.wait(10)
        self.watcher.disconnect()
        self.watcher.loop_stop()


def _agent_download_seconds(url: str, pkg: Path, pub: Path, data: Path, window: int) -> float:
    device = _Device(url, pub, data, window)
    try:
        time.sleep(1.0)  # connected and subscribed
        _publish_desired(url, _desired(pkg, 2), data.name)
        return float(device.download()["seconds"])
    finally:
        device.close()


def _transfer(tmp: Path, url: str, pkg: Path, pub: Path, *, rounds: int, windows: tuple[int, ...]) -> dict[str, Any]:
    data = pkg.read_bytes()
    size_mb = len(data) / 1e6
    raw_s = []
    agent_s: dict[int, list[float]] = {w: [] for w in windows}
    for i in range(rounds):
        raw_s.append(_raw_loop(url, data))
        for w in windows:
            agent_s[w].append(_agent_download_seconds(url, pkg, pub, tmp / f"xfer-{w}-{i}", w))
    r = statistics.median(raw_s)
    out: dict[str, Any] = {"package_mb": size_mb, "raw_s": r, "raw_mb_s": size_mb / r, "raw_runs": raw_s,
                           "rounds": rounds, "windows": {}}  # fmt: skip
    for w, runs in agent_s.items():
        a = statistics.median(runs)
        out["windows"][str(w)] = {"agent_s": a, "agent_mb_s": size_mb / a, "ratio": r / a, "runs": runs}
    return out


@dataclass
class _Stalling(PackageServer):
    """Answers only the chunks below ``upto`` (None: all) and records what it is asked for."""

    upto: int | None = None
    requested: list[int] = field(default_factory=list)

    def answer(self, request: Any) -> Any:
        self.requested.append(request.offset)
        if self.upto is not None and request.offset >= self.upto:
            return None  # the device times out and asks again: a download stuck at half
        return super().answer(request)


def _resume(tmp: Path, repo: Path, url: str, pkg: Path, pub: Path) -> dict[str, Any]:
    """kill -9 the agent with half the chunks on disk, restart it: what does the second run fetch, and how fast?"""
    desired = _desired(pkg, 3)
    count = -(-desired.size // CHUNK)
    data = tmp / "resume"
    have = data / "downloads" / f"{desired.sha256}.have"
    stalling = _Stalling(repo, url)
    stalling.upto = count // 2 * CHUNK
    stalling.start()
    try:
        first = _Device(url, pub, data)
        time.sleep(1.0)
        _publish_desired(url, desired, data.name)
        _wait(lambda: have.exists() and len(have.read_text().splitlines()) >= count // 2, "half the chunks")
        first.close(kill=True)
        held = len(have.read_text().splitlines())
        stalling.upto, stalling.requested = None, []
        t0 = time.perf_counter()
        second = _Device(url, pub, data)  # the desired message is retained: it resumes on its own
        done = second.download()
        wall = time.perf_counter() - t0
        second.close()
    finally:
        stalling.stop()
    return {"chunks": count, "held_at_kill": held, "resumed_chunks": done["resumed_chunks"],
            "fetched_after_restart": len(stalling.requested), "fetch_s": done["seconds"],
            "restart_to_downloaded_s": wall}  # fmt: skip


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def render(res: dict[str, Any]) -> list[str]:
    lines = [
        "## Device agent (issue 5)",
        "",
        header(res) + " Mosquitto on loopback with `set_tcp_nodelay true`; 2 threads.",
        "",
        "### Inference overhead (p50 ms, interleaved rounds, agent running and connected)",
        "",
        "| model | bare ORT session | agent `model.predict` | overhead | noise | request (decode+predict+encode) |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in res["latency"].items():
        lines.append(
            f"| {model} | {r['bare_ort']:.4f} | {r['agent_predict']:.4f} | {r['overhead_pct']:+.1f}% | "
            f"{_fmt_pct(r.get('noise_pct'))} | {r['agent_request']:.4f} ({r['request_overhead_pct']:+.0f}%) |"
        )
    lines += [
        "",
        "Overhead is against the faster of two bare sessions on the same file; noise = how far those two bare",
        "sessions differ from each other (each has its own arena and thread pool), the floor to read it against.",
    ]
    rss, t, z = res["rss"], res["transfer"], res.get("resume")
    lines += [
        "",
        "### Idle memory with the digits INT8 model loaded",
        "",
        f"`edgekit-agent run` RSS {rss['agent_rss'] / 2**20:.1f} MB; bare Python + ONNX Runtime with the same "
        f"model {rss['bare_rss'] / 2**20:.1f} MB; the agent costs **{rss['delta_mb']:+.1f} MB**.",
        *(
            [
                "",
                "### Start-up to first inference",
                "",
                f"`edgekit-agent run` spawned with the digits package installed, until its first inference answer "
                f"over MQTT (a request every 10 ms from the spawn): median **{statistics.median(up):.2f} s** "
                f"(min {min(up):.2f}, max {max(up):.2f}, {len(up)} starts). It includes Python start-up, importing "
                "ONNX Runtime, connecting, loading the model and its smoke test (the package's sample checked "
                "against its expected output before the first request is served).",
            ]
            if (up := rss.get("startup_s"))
            else []
        ),
        "",
        f"### Transfer of a {t['package_mb']:.1f} MB package (256 KiB chunks, median of {t.get('rounds', 3)})",
        "",
        "| path | seconds | MB/s | vs raw loop |",
        "|---|---|---|---|",
        f"| raw paho publish loop, QoS1, same chunks, one process | {t['raw_s']:.3f} | {t['raw_mb_s']:.0f} | - |",
        *(
            f"| `edgekit-agent run` pull, {w} requests in flight (own process, written to disk) | "
            f"{x['agent_s']:.3f} | {x['agent_mb_s']:.0f} | **{x['ratio']:.0%}** |"
            for w, x in t["windows"].items()
        ),
        "",
        "The agent's time is from the first request to the last chunk written and recorded (the `download`",
        "event's `seconds`; chunks are checked by the whole-file sha256, part of verifying, after it); `edgekit",
        "serve` runs in the bench process. Both ends turn Nagle off (`TCP_NODELAY`): with it on, the first chunk",
        "waited ~40 ms on a delayed ACK and the 32-in-flight pull measured 43 % of the raw loop.",
    ]
    if z:
        lines += [
            "",
            "### Resume after kill -9 at half",
            "",
            f"A server that answers only the first half of the {z['chunks']} chunks; the agent is killed with "
            f"{z['held_at_kill']} chunks on disk and started again. The second run found "
            f"**{z['resumed_chunks']} chunks** already held (re-hashed from the part file) and asked for "
            f"**{z['fetched_after_restart']}**; its pull took {z['fetch_s']:.3f} s, and process start to "
            f"downloaded {z['restart_to_downloaded_s']:.2f} s (Python start-up, connecting and re-reading the retained "
            "`desired` included).",
        ]
    return lines
