"""``edgekit fleet bench PKG``: time a package on devices without deploying it (``bench/request`` →
``bench/response``, docs/protocol.md), and keep what they answer in the store.

The package goes into the repository ``edgekit serve`` answers chunk requests from (as a deployment's
does); each device fetches, verifies, runs and deletes it (``edgekit_agent.bench``). The answers are stored
as they came and returned; a device that does not answer within the timeout is named in one line.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.protocol import ANY, BenchRequest, ProtocolError, loads, parse_topic, subscription, topic

from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt
from edgekit.fleet.deploy import Release, release, targets
from edgekit.fleet.store import Store


class BenchFailed(EdgekitError):
    """A bench the host could not get an answer to (a device offline, busy, or refusing the package)."""


@dataclass
class Options:
    runs: int = 200
    warmup: int = 20
    batch_sizes: tuple[int, ...] = (1,)
    max_seconds: float = 120.0
    timeout: float = 300.0  # seconds to wait for every answer, download included


@dataclass
class Answers:
    """The answers by device, and the ``bench/response`` messages exactly as they came off the broker."""

    by_device: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: list[bytes] = field(default_factory=list)


def check(options: Options) -> BenchRequest:
    """The request's bounds, checked before anything is published (the device checks them again)."""
    from edgekit_agent.protocol import Desired

    probe = BenchRequest("check", Desired("x", "0", "0" * 64, 0, 1), options.runs, options.warmup,
                         tuple(options.batch_sizes), options.max_seconds)  # fmt: skip
    try:
        return BenchRequest.from_json(probe.to_json())
    except ProtocolError as exc:
        raise BenchFailed(f"{exc}; change -n / --warmup / --batch / --max-seconds") from None


def bench_package(store: Store, broker: str, fleet: str, package: Path, repository: Path, *, devices: list[str],
                  group: str | None, options: Options, progress: Callable[[str], None] = lambda _m: None,
                  ) -> tuple[Release, Answers]:  # fmt: skip
    """Bench ``package`` on the devices (or the group); every answer is stored. Raises BenchFailed naming the
    devices that did not answer, after storing those that did."""
    check(options)
    rel = release(package, repository)
    names = [r["device"] for r in targets(store, fleet, devices=devices, group=group, profile=rel.profile)]
    answers = run_bench(broker, fleet, rel, names, options, progress)
    store_answers(store, fleet, answers)
    missing = [d for d in names if d not in answers.by_device]
    if missing:
        rows = {d: (store.device(fleet, d) or {}).get("status") for d in missing}
        said = ", ".join(f"{d} ({rows[d] or 'never seen'})" for d in missing)
        raise BenchFailed(f"no bench answer within {options.timeout:g} s from {said}; start its agent (and "
                          "edgekit serve with --packages holding the package) or leave it out")  # fmt: skip
    return rel, answers


def store_answers(store: Store, fleet: str, answers: Answers) -> None:
    """Keep every answer; one that cannot be stored (a device's answer is untrusted: too large, not JSON a
    store takes) is replaced by an error answer that says so."""
    for device, answer in list(answers.by_device.items()):
        try:
            store.record_bench(fleet, device, answer)
        except ProtocolError as exc:
            answers.by_device[device] = {"id": answer.get("id"), "package": answer.get("package"), "status": "error",
                                         "reason": f"the device's answer cannot be stored: {exc}"}  # fmt: skip
            store.record_bench(fleet, device, answers.by_device[device])


def run_bench(broker: str, fleet: str, rel: Release, devices: list[str], options: Options,
              progress: Callable[[str], None] = lambda _m: None) -> Answers:  # fmt: skip
    """Send one request per device and collect the answers until all came or the timeout."""
    ids = {d: f"b{uuid.uuid4().hex[:12]}" for d in devices}
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    c = mqtt.client("bench")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        inbox.put((msg.topic, bytes(msg.payload)))

    def on_connect(client: Any, *_args: Any) -> None:
        client.subscribe(subscription(fleet, "bench/response", device=ANY), qos=1)

    subscribed = threading.Event()
    c.on_message, c.on_connect = on_message, on_connect
    c.on_subscribe = lambda *_args: subscribed.set()
    mqtt.connect(c, broker)
    answers = Answers()
    try:
        deadline = time.monotonic() + options.timeout
        if not subscribed.wait(10):  # listening before asking: an answer must not come before we listen
            raise BenchFailed(f"the broker at {broker} did not confirm the bench/response subscription in 10 s")
        for device, bench_id in ids.items():
            request = BenchRequest(bench_id, rel.desired, options.runs, options.warmup, tuple(options.batch_sizes),
                                   options.max_seconds)  # fmt: skip
            c.publish(topic(fleet, device, "bench/request"), request.to_json(), qos=1).wait_for_publish(10)
        progress(f"bench of {rel.desired.name} {rel.desired.version} asked of {len(ids)} device(s)")
        while len(answers.by_device) < len(ids) and time.monotonic() < deadline:
            try:
                name, payload = inbox.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                continue
            try:
                device, body = parse_topic(name)[1], loads(payload)
            except ProtocolError:
                continue  # not an answer anyone here asked for
            if ids.get(device) != body.get("id"):
                continue  # an answer to another host's bench, or to an earlier one
            answers.by_device[device], answers.raw = body, [*answers.raw, payload]
            progress(f"{device}: {body.get('status')}")
    finally:
        c.disconnect()
        c.loop_stop()
    return answers


def summary_rows(answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per device and batch size: what a table and the report show."""
    rows = []
    for device, a in sorted(answers.items()):
        runtime = f"{a.get('engine')}:{a.get('device')}" + (" (emulated)" if a.get("emulated") else "")
        base = {"device": device, "status": a.get("status"), "runtime": runtime if a.get("status") == "ok" else None,
                "reason": a.get("reason")}  # fmt: skip
        power = a.get("power") or {}
        for b in a.get("batches") or [{}]:
            rows.append(base | {"batch": b.get("batch"), "p50_ms": b.get("p50_ms"), "p95_ms": b.get("p95_ms"),
                                "p99_ms": b.get("p99_ms"), "items_per_s": b.get("items_per_s"),
                                "error": b.get("error"), "sample_ok": (a.get("sample") or {}).get("ok"),
                                "rss_added_bytes": a.get("rss_added_bytes"),
                                "marginal_energy_mj": power.get("marginal_energy_per_inference_mj"),
                                "energy_is_estimate": power.get("is_estimate"),
                                "serving_p50_ms": (a.get("serving") or {}).get("p50_ms")})  # fmt: skip
    return rows
