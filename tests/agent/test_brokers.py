"""Broker URL lists: parsing, one-line errors, and moving on only when the connection was lost."""

from __future__ import annotations

import pytest
from edgekit_agent.brokers import BrokerListError, Failover, parse_brokers


def test_a_list_of_nodes_with_default_ports():
    nodes = parse_brokers("mqtt://a:1884, b ,")
    assert [(n.host, n.port, n.tls) for n in nodes[:2]] == [("a", 1884, False), ("b", 1883, False)]
    with pytest.raises(BrokerListError, match="mixes"):
        parse_brokers("mqtt://a,mqtts://c")
    assert parse_brokers("mqtt://a", tls=True)[0].port == 8883


@pytest.mark.parametrize("spec, text", [("", "empty"), (" , ", "empty"), ("http://a", "must look like")])
def test_bad_lists_are_one_line_errors(spec, text):
    with pytest.raises(BrokerListError, match=text):
        parse_brokers(spec)


class Client:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def connect_async(self, host: str, port: int, keepalive: int) -> None:
        self.calls.append((host, port))


class Reason:
    def __init__(self, failure: bool) -> None:
        self.is_failure = failure


def test_failover_goes_round_robin_and_ignores_a_requested_disconnect():
    f, c = Failover(parse_brokers("a:1,b:2,c:3")), Client()
    f.next(c, Reason(failure=False))  # the program disconnected on purpose: stay
    assert c.calls == [] and f.index == 0
    for _ in range(3):
        f.next(c, Reason(failure=True))
    assert c.calls == [("b", 2), ("c", 3), ("a", 1)] and f.moves == 3
    single, c1 = Failover(parse_brokers("a:1")), Client()
    single.next(c1)
    assert c1.calls == []  # one broker: paho's own reconnect to it
