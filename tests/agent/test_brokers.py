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


def test_retained_messages_are_asked_for_again_until_the_connection_changes(broker):
    """The re-read after a reconnect (a cluster node's retained view may lag) against a real broker: every
    SUBSCRIBE, also of an existing subscription, delivers the retained message again; a new connection
    generation stops the chain."""
    import threading
    import time

    import paho.mqtt.client as paho
    from edgekit_agent.brokers import reread_retained

    got: list[bytes] = []
    subscribed = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="reread")
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish("lab/dev-1/desired", b"v2", qos=1, retain=True).wait_for_publish(5)
        c.subscribe("lab/dev-1/desired", qos=0)
        assert subscribed.wait(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [b"v2"]
        generation = {"now": 1}
        reread_retained(c, ["lab/dev-1/desired"], lambda: generation["now"] == 1, delays=(0.1, 0.1, 2.0))
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        generation["now"] = 2  # a reconnect happened: the last re-read (2 s on) must not fire
        time.sleep(2.5)
        assert got == [b"v2"] * 3
    finally:
        c.loop_stop()
        c.disconnect()


def test_credentials_from_a_url_decode_the_password_and_see_tls():
    from edgekit_agent.brokers import Credentials

    c = Credentials.from_url("mqtts://edge%40host:p%3Ass@broker:8883", ca="/ca.crt")
    assert (c.username, c.password, c.tls, c.ca) == ("edge@host", "p:ss", True, "/ca.crt")
    assert Credentials.from_url("mqtt://broker") == Credentials()


def test_the_one_client_factory_sets_what_host_and_agent_both_need():
    """A real paho client (not connected): MQTT 3.1.1, a bounded queue, TCP_NODELAY on open, the session
    kind asked for; credentials applied by secure()."""
    import paho.mqtt.client as mqtt
    from edgekit_agent.brokers import Credentials, new_client, secure, tcp_nodelay

    c = new_client("edgekit-test-1", clean_session=False, queue=7)
    assert c.protocol == mqtt.MQTTv311 and c._max_queued_messages == 7 and c._clean_session is False
    assert c.on_socket_open is tcp_nodelay
    secure(c, Credentials("dev", "pw"))
    assert c._username == b"dev" and c._password == b"pw"
