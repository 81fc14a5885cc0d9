"""Issue 20: one hostile device cannot stop the host for the fleet.

A real ``edgekit serve`` process on a real Mosquitto, storing into SQLite and PostgreSQL, is sent every
message class that once stalled, crashed or corrupted it (an integer past 64 bits, a retained state with a
list where a string belongs, a chunk offset past 2**64, p95 = -1e308, NaN, nesting past the recursion
limit), then payloads hypothesis builds from the schema's own field names with values of any type and
size. After each: a good device's telemetry is stored within 2 s, a good chunk request is answered, and at
the end ``fleet status --format json`` parses as strict JSON, ``fleet report`` succeeds, serve stops on
SIGTERM within 2 s, and a restarted serve quarantines the retained poison state once, not again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker import Broker
from edgekit_agent.protocol import ChunkRequest, ChunkResponse, dumps
from edgekit_agent.schema import TELEMETRY
from fleet import Host, wait_until
from fuzzing import FUZZ, json_values
from hypothesis import given
from hypothesis import strategies as st
from stores import store_url

from edgekit.fleet.store import Store

pytestmark = pytest.mark.integration
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
PACKAGE_SIZE = 300_000


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


class Served:
    """serve (a child process), its store, a hostile and a good device."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.broker = Broker(root)
        self.broker.start()
        repo = root / "repo"
        repo.mkdir()
        data = os.urandom(PACKAGE_SIZE)
        (repo / "p.edgepkg").write_bytes(data)
        self.sha = hashlib.sha256(data).hexdigest()
        self.proc: subprocess.Popen | None = None
        self.start()
        self.store = Store(url)
        self.evil = Host(self.broker.url, "lab", "evil")
        self.good = Host(self.broker.url, "lab", "good")
        self.seq = 0
        state = {"status": "online", "profile": "rpi5", "package": {"name": "p", "version": "1", "counter": 1}}
        self.good.publish("state", dumps(state), retain=True)
        self.check_healthy()  # readiness: serve is subscribed and answering

    def start(self) -> None:
        args = [EDGEKIT, "serve", "--packages", str(self.root / "repo"), "--broker", self.broker.url, "--db", self.url]
        self.log = open(self.root / f"serve-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def sigterm(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return time.monotonic() - t0

    def check_healthy(self, within: float = 2.0) -> None:
        """A good device's telemetry is stored and its chunk request answered (the first call waits longer)."""
        self.seq += 1
        seq, first = self.seq, self.seq == 1
        rid = f"good-{seq}"
        deadline = time.monotonic() + (30.0 if first else within)
        body = dumps({"inferences": seq, "latency_ms": {"p95": 1.0}, "package": {"version": "1"}, "seq": seq})
        sent = 0.0
        while True:  # a first request may go out before serve has subscribed: send again until answered
            if time.monotonic() - sent > 1.0:
                self.good.publish("telemetry", body)
                self.good.publish("chunk/request", ChunkRequest(rid, self.sha, 0, 4096).to_json())
                sent = time.monotonic()
            stored = self.store.query(
                "SELECT COUNT(*) AS n FROM telemetry WHERE device = 'good' AND inferences = ?", (seq,)
            )[0]["n"]
            answers = [ChunkResponse.from_bytes(r) for r in self.good.messages["chunk/response"]]
            answer = next((a for a in answers if a.request_id == rid), None)
            if stored and answer is not None:
                assert answer.error is None and len(answer.data) == 4096
                return
            assert time.monotonic() < deadline, f"serve stopped working (stored={stored}, answered={answer})"
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.evil.close()
        self.good.close()
        self.store.close()
        self.broker.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"hostile-{request.param}")
    with store_url(request.param, root) as url:
        s = Served(root, url)
        yield s
        s.close()


HOSTILE = [
    ("telemetry", dumps({"inferences": 10**30, "time": "2026-11-30T10:00:00Z"}), False),
    ("state", dumps({"status": "online", "package": {"name": ["a"], "version": "1", "counter": 1}}), True),
    ("state", dumps({"status": "online", "package": {"name": "p", "version": "-1", "counter": -1}}), False),
    ("telemetry", dumps({"latency_ms": {"p95": -1e308}}), False),
    ("telemetry", b'{"latency_ms": {"p95": NaN}, "inferences": 1}', False),
    ("telemetry", b'{"power": {"watts": 1e999}}', False),
    ("events", b"[" * 200_000, False),
    ("events", dumps({"kind": {"nested": [1, 2]}}), False),
    (
        "chunk/request",
        json.dumps({"request_id": "x", "sha256": "0" * 64, "offset": 2**70, "length": 9}).encode(),
        False,
    ),
]


@pytest.mark.parametrize(
    ("kind", "payload", "retain"), HOSTILE, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(HOSTILE)]
)
def test_each_poison_message_leaves_serve_working(served, kind, payload, retain):
    served.evil.publish(kind, payload, retain=retain)
    served.check_healthy()


def test_chunk_requests_past_the_end_or_for_unknown_packages_get_a_reason(served):
    for rid, sha, offset in (("past", served.sha, PACKAGE_SIZE + 10), ("huge", served.sha, 2**39),
                             ("unknown", "f" * 64, 0)):  # fmt: skip
        served.evil.publish("chunk/request", ChunkRequest(rid, sha, offset, 1024).to_json())
        answer = served.evil.wait_for(
            lambda rid=rid: next((a for a in map(ChunkResponse.from_bytes, served.evil.messages["chunk/response"])
                                  if a.request_id == rid), None), f"answer to {rid}")  # fmt: skip
        assert answer.error and not answer.data
    # the last chunk is cut to the package's end, not padded or refused
    served.good.publish("chunk/request", ChunkRequest("tail", served.sha, PACKAGE_SIZE - 100, 4096).to_json())
    tail = served.good.wait_for(
        lambda: next((a for a in map(ChunkResponse.from_bytes, served.good.messages["chunk/response"])
                      if a.request_id == "tail"), None), "the tail chunk")  # fmt: skip
    assert tail.error is None and len(tail.data) == 100
    served.check_healthy()


def _schema_shaped():
    """Messages built from the schema's own field names (nested as on the wire) with values of any type."""
    leaves = st.one_of(json_values, st.integers(min_value=-(2**80), max_value=2**80), st.floats(-1e308, 1e308))
    names = st.sampled_from(
        [f.path for f in TELEMETRY]
        + [
            ("package", "name"),
            ("package", "counter"),
            ("status",),
            ("capabilities",),
            ("kind",),
            ("time",),
            ("runtime",),
        ]
    )

    def build(pairs):
        body: dict = {}
        for path, value in pairs:
            node = body
            for key in path[:-1]:
                node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
            node[path[-1]] = value
        return body

    return st.lists(st.tuples(names, leaves), max_size=8).map(build)


@FUZZ
@given(kind=st.sampled_from(["telemetry", "state", "events"]), body=_schema_shaped())
def test_schema_shaped_garbage_on_every_topic_serve_reads_is_stored_or_quarantined(served, kind, body):
    served.evil.publish(kind, json.dumps(body).encode())
    served.check_healthy()


def test_status_and_report_stay_valid_and_serve_stops_at_once_and_quarantines_a_retained_poison_once(
    served, cli, tmp_path
):
    code, out, err = cli("fleet", "status", "--db", served.url, "--fleet", "lab", "--format", "json")
    assert code == 0, err
    rows = {r["device"]: r for r in strict_json(out)}
    assert "evil" not in rows  # it never sent a valid state: not a fleet member
    assert rows["good"]["online"] and rows["good"]["p95_ms"] == 1.0 and rows["good"]["version"] == "1"
    code, _, err = cli("fleet", "report", "--db", served.url, "--fleet", "lab", "--out", tmp_path / "r.html")
    assert code == 0, err
    counts = served.store.counts()
    print(f"quarantined {counts['quarantine']}, telemetry stored {counts['telemetry']}, events {counts['events']}")
    assert counts["quarantine"] >= len(HOSTILE) - 1  # the chunk request is refused by serve, not quarantined
    assert served.sigterm() < 2.0
    before = served.store.counts()["quarantine"]
    served.start()  # the broker delivers the retained poison state again on subscribe
    served.check_healthy(within=30.0)
    assert served.store.counts()["quarantine"] == before  # kept once, by the digest of its bytes
    wait_until(lambda: served.proc.poll() is None, "serve running")
