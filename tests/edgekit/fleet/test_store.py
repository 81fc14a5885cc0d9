"""The fleet store on SQLite and PostgreSQL: idempotent ingest, device state, labels and groups, errors."""

from __future__ import annotations

import json
import time

import pytest
from edgekit_agent.protocol import ProtocolError
from stores import store_url

from edgekit.fleet.store import Message, Store, StoreUnreachable, UnknownDevice, check, digest, message


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    with store_url(request.param, tmp_path) as url:
        s = Store(url)
        yield s
        s.close()


def msg(kind: str, device: str, body: dict, fleet: str = "lab") -> Message:
    payload = json.dumps(body, sort_keys=True).encode()
    return message(fleet, device, kind, body, digest(f"edgekit/v1/{fleet}/{device}/{kind}", payload), time.time())


def state(device: str, version: str | None, status: str = "online", profile: str = "x86-64-generic") -> Message:
    package = {"name": "tiny", "version": version, "counter": 7} if version else None
    return msg("state", device, {"status": status, "device": device, "profile": profile, "package": package,
                                 "runtime": "onnxruntime:CPUExecutionProvider", "capabilities": {"runtimes": ["ort"]},
                                 "time": "2026-11-23T10:00:00.000000Z"})  # fmt: skip


def telemetry(device: str, seq: int, p95: float = 1.5, version: str = "v1") -> Message:
    return msg("telemetry", device, {"seq": seq, "inferences": 10, "errors": 1, "latency_ms": {"p50": 1.0, "p95": p95,
               "p99": 2.0}, "power": {"watts": 3.5, "source": "estimate"}, "energy_per_inference_mj": 0.5,
               "energy_is_estimate": True, "package": {"version": version}, "throughput_per_s": 20.0,
               "time": f"2026-11-23T10:00:{seq:02d}.000000Z"})  # fmt: skip


def test_ingest_is_idempotent_under_duplicates(store):
    batch = [state("a", "v1"), *[telemetry("a", i) for i in range(5)], msg("events", "a", {"kind": "update"})]
    store.ingest(batch)
    new = store.ingest([telemetry("a", 2), telemetry("a", 3), msg("events", "a", {"kind": "update"})])
    assert new == 0
    counts = store.counts()
    assert counts["telemetry"] == 5 and counts["events"] == 1 and counts["devices"] == 1
    row = store.telemetry("lab", "a")[0]
    assert row["p95_ms"] == 1.5 and row["power_source"] == "estimate" and row["energy_is_estimate"] == 1
    assert row["package_version"] == "v1" and row["inferences"] == 10


def test_state_upsert_keeps_the_package_when_the_last_will_arrives(store):
    store.ingest([state("a", "v1")])
    store.ingest([state("a", "v2")])
    store.ingest([state("a", "v1", status="offline")])  # a last will composed when v1 was running
    device = store.device("lab", "a")
    assert device["status"] == "offline" and device["package_version"] == "v2"


def test_missing_fields_are_stored_as_null(store):
    assert store.ingest([msg("telemetry", "a", {"time": 12})]) == 1
    row = store.telemetry("lab", "a")[0]
    assert row["p95_ms"] is None and row["inferences"] is None and row["power_w"] is None


@pytest.mark.parametrize(
    ("kind", "body", "named"),
    [
        ("telemetry", {"latency_ms": "fast"}, "latency_ms must be an object"),
        ("telemetry", {"inferences": "many"}, "inferences must be an integer"),
        ("telemetry", {"inferences": 10**30}, "inferences = "),
        ("telemetry", {"inferences": True}, "inferences must be an integer"),
        ("telemetry", {"latency_ms": {"p95": -1e308}}, "latency_ms.p95 = "),
        ("telemetry", {"power": []}, "power must be an object"),
        ("telemetry", {"power": {"source": ["rapl"]}}, "power.source must be a string"),
        ("telemetry", {"energy_is_estimate": "yes"}, "energy_is_estimate must be true or false"),
        ("telemetry", {"package": {"version": {"v": 1}}}, "package.version must be a string"),
        ("state", {"status": "online", "package": {"name": ["a"], "version": "1", "counter": 1}}, "package.name"),
        ("state", {"status": "online", "package": {"name": "a", "version": "1", "counter": 2**70}}, "package.counter"),
        ("state", {"status": "zombie"}, "status must be"),
        ("state", {"status": "online", "capabilities": [1]}, "capabilities must be an object"),
        ("events", {"kind": {"x": 1}}, "kind must be a string"),
    ],
)
def test_a_message_that_breaks_the_schema_is_refused_with_the_field_named(kind, body, named):
    with pytest.raises(ProtocolError, match=named.replace(".", r"\.").replace("(", r"\(")):
        check(kind, body)


def test_labels_and_groups(store):
    store.ingest([state("a", "v1"), state("b", "v1"), state("c", "v1", profile="rpi4")])
    store.label("lab", "a", {"group": "canary", "site": "paris"})
    store.label("lab", "b", {"site": "paris"})
    assert [d["device"] for d in store.group("lab", "canary")] == ["a"]
    assert [d["device"] for d in store.group("lab", "site=paris")] == ["a", "b"]
    assert [d["device"] for d in store.group("lab", "rpi4")] == ["c"]
    assert len(store.group("lab", "all")) == 3
    assert store.label("lab", "a", {"site": None}) == {"group": "canary"}
    with pytest.raises(UnknownDevice, match=r"unknown device 'zz'.*known: a, b, c"):
        store.device("lab", "zz")


def test_unreachable_stores_name_the_problem(tmp_path):
    with pytest.raises(StoreUnreachable, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1"):
        Store("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(StoreUnreachable, match="must be sqlite"):
        Store("mysql://x")
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnreachable, match="cannot open the SQLite store"):
        Store(f"sqlite:///{tmp_path / 'file' / 'fleet.db'}")


def test_a_late_will_of_an_earlier_connection_does_not_override_the_online_state_of_the_next(store):
    """Two serve workers share the stream, so a device's states may be stored out of publish order."""

    def state_of(status: str, connection: int | None, instance: str | None = "p1") -> Message:
        package = {"name": "tiny", "version": "v1", "counter": 7}
        return msg("state", "a", {"status": status, "instance": instance, "connection": connection,
                                  "package": package})  # fmt: skip

    def status() -> str:
        return store.device("lab", "a")["status"]

    store.ingest([state_of("online", 1)])
    store.ingest([state_of("online", 2)])  # reconnected (a broker node died)
    store.ingest([state_of("offline", 1)])  # the first connection's will, stored late by another worker
    assert status() == "online"
    store.ingest([state_of("offline", 2)])  # the second connection dies: its own will counts
    assert status() == "offline"
    store.ingest([state_of("online", 1, instance="p2")])  # the agent restarted: a new process, whatever its number
    assert status() == "online" and store.device("lab", "a")["state_instance"] == "p2"
    store.ingest([state_of("offline", None, instance=None)])  # an agent that numbers nothing: arrival order
    assert status() == "offline"


def test_a_hostile_bench_answer_is_stored_bounded_or_replaced_by_an_error(tmp_path):
    """A device's bench/response is untrusted: wrongly typed fields become short strings or null; one that
    no store can take is replaced by an error answer naming why."""
    from edgekit.fleet.bench import Answers, store_answers

    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    answers = Answers(by_device={
        "d1": {"id": "b1", "status": ["ok"], "package": "nope", "batches": [{"p50_ms": "fast"}, 3]},
        "d2": {"id": "b2", "status": "ok", "batches": [{"p50_ms": 1.5}], "pad": "x" * 100_000},
    })  # fmt: skip
    store_answers(store, "lab", answers)
    rows = {r["device"]: r for r in store.benches("lab")}
    assert rows["d1"]["p50_ms"] is None and rows["d1"]["status"] == "['ok']" and rows["d1"]["name"] == "None"
    assert rows["d2"]["status"] == "error" and "cannot be stored" in rows["d2"]["body"]["reason"]
    assert answers.by_device["d2"]["status"] == "error"
