import pytest
from edgekit_agent.protocol import Desired, ProtocolError, parse_topic, subscription, topic

SHA = "ab" * 32


def test_topic_round_trips_through_parse():
    name = topic("lab", "pi-01", "chunk/request")
    assert name == "edgekit/v1/lab/pi-01/chunk/request"
    assert parse_topic(name) == ("lab", "pi-01", "chunk/request")
    assert subscription("lab", "telemetry") == "edgekit/v1/lab/+/telemetry"


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
