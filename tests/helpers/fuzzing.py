"""Hypothesis strategies for the MQTT handler fuzz tests (issue 8): topics and payloads that are
malformed, oversized, wrongly typed or truncated, and a real paho message to carry them."""

from __future__ import annotations

import json

import paho.mqtt.client as paho
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

KINDS = ("desired", "chunk/response", "infer/request", "chunk/request", "state", "telemetry", "events")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
# the fields of the real messages with values of any type: the "wrongly typed" payloads
fields = st.sampled_from(["name", "version", "sha256", "counter", "size", "request_id", "offset", "length", "id",
                          "inputs", "chunk_sha256", "error", "status", "time", "latency_ms"])  # fmt: skip
typed = st.dictionaries(fields, json_values, max_size=8).map(lambda d: json.dumps(d).encode())
header_framed = st.tuples(st.integers(0, (1 << 32) - 1), st.binary(max_size=300)).map(
    lambda t: t[0].to_bytes(4, "big") + t[1]
)
payloads = st.one_of(
    st.binary(max_size=2048),
    typed,
    json_values.map(lambda v: json.dumps(v).encode()),
    typed.map(lambda b: b[: max(0, len(b) // 2)]),  # truncated
    header_framed,  # what a chunk response looks like, with any header length
    st.just(b"{" * 100_000),  # deep nesting
    st.just(b"x" * (2 << 20)),  # oversized: 2 MiB
)
topics = st.one_of(
    st.sampled_from(KINDS).map(lambda k: f"edgekit/v1/lab/dev-1/{k}"),
    st.text(max_size=80),
    st.sampled_from(["edgekit/v1/lab", "edgekit/v1/lab/dev-1", "edgekit/v1/../dev-1/desired", "#", ""]),
)


def message(topic: str, payload: bytes) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=topic.encode("utf-8", "surrogatepass") if topic else b"")
    msg.payload = payload
    return msg
