import pytest
from edgekit_agent.protocol import (
    ANY,
    Desired,
    ProtocolError,
    acl_pattern,
    parse_topic,
    subject_of,
    subscription,
    topic,
    topic_of,
)

SHA = "ab" * 32


def test_topic_round_trips_through_parse():
    name = topic("lab", "pi-01", "chunk/request")
    assert name == "edgekit/v1/lab/pi-01/chunk/request"
    assert parse_topic(name) == ("lab", "pi-01", "chunk/request")
    assert subscription("lab", "telemetry") == "edgekit/v1/lab/+/telemetry"


def test_wildcards_come_from_one_builder_and_map_onto_nats_subjects():
    assert subscription(ANY, "chunk/request") == "edgekit/v1/+/+/chunk/request"
    assert subscription(ANY, "state", share="serve") == "$share/serve/edgekit/v1/+/+/state"
    assert subscription("lab", None, device="pi-01") == "edgekit/v1/lab/pi-01/#"
    assert subscription(ANY, None) == "edgekit/v1/#"
    assert acl_pattern("lab", "desired") == "edgekit/v1/lab/%u/desired"
    assert subject_of(subscription(ANY, "chunk/request")) == "edgekit.v1.*.*.chunk.request"
    assert subject_of(subscription(ANY, None)) == "edgekit.v1.>"
    name = topic("lab", "pi-01", "telemetry")
    assert topic_of(subject_of(name)) == name
    for bad in [("lab", "nope"), ("a/b", "state")]:
        with pytest.raises(ProtocolError):
            subscription(*bad)
    with pytest.raises(ProtocolError):
        subscription(ANY, "state", share="a/b")  # a group name that would change the filter
    with pytest.raises(ProtocolError):
        acl_pattern("lab", "nope")


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "x" * 65, "../up"])
def test_topic_refuses_ids_that_would_escape_or_wildcard(device):
    with pytest.raises(ProtocolError):
        topic("lab", device, "state")


def test_desired_round_trip_and_validation():
    d = Desired("digits", "1.0.0", SHA, 3, 1024)
    assert Desired.from_json(d.to_json()) == d
    for bad in [
        b"not json",
        b"[]",
        b'{"name": "x"}',
        d.to_json().replace(b"1024", b'"big"'),
        b"{" + b" " * (2 << 20) + b"}",
    ]:
        with pytest.raises(ProtocolError):
            Desired.from_json(bad)


def test_a_bench_request_is_bounded_and_exact():
    import json

    from edgekit_agent.protocol import BenchRequest, Desired

    good = BenchRequest("b-1", Desired("m", "1", "a" * 64, 2, 100), runs=50, warmup=5, batch_sizes=(1, 8))
    assert BenchRequest.from_json(good.to_json()) == good
    body = json.loads(good.to_json())
    for change, words in [({"runs": 0}, "runs must be"), ({"runs": True}, "wrong type"), ({"warmup": 1001}, "warmup"),
                          ({"batch_sizes": []}, "batch_sizes"), ({"batch_sizes": [1, 2, 3, 4, 5]}, "batch_sizes"),
                          ({"batch_sizes": [257]}, "batch_sizes"), ({"batch_sizes": [1.5]}, "batch_sizes"),
                          ({"max_seconds": 0}, "max_seconds"), ({"max_seconds": 601}, "max_seconds"),
                          ({"id": "a b"}, "bench id"), ({"extra": 1}, "unknown fields"),
                          ({"package": {"name": "m"}}, "missing field")]:  # fmt: skip
        with pytest.raises(ProtocolError, match=words):
            BenchRequest.from_json(json.dumps(body | change))
