"""The local broker launcher: Mosquitto where installed, the embedded amqtt broker as the fallback."""

from __future__ import annotations

import threading

import pytest

from edgekit.fleet import mqtt
from edgekit.fleet.broker import LocalBroker, mosquitto_path

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_a_message_round_trips_through_each_broker(tmp_path, kind):
    if kind == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed here; the amqtt case covers the fallback")
    broker = LocalBroker(tmp_path)
    broker.kind = kind
    broker.start()
    got = threading.Event()
    sub, pub = mqtt.client("t-sub"), mqtt.client("t-pub")
    try:
        sub.on_message = lambda _c, _u, msg: got.set() if msg.payload == b"ping" else None
        mqtt.connect(sub, broker.url)
        sub.subscribe("t/x", qos=1)
        mqtt.connect(pub, broker.url)
        for _ in range(20):  # the subscription may land a moment after connect returns
            pub.publish("t/x", b"ping", qos=1)
            if got.wait(0.5):
                break
        assert got.is_set()
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
        broker.stop()


def test_an_unreachable_broker_is_one_line(tmp_path):
    from edgekit.fleet.broker import free_port
    from edgekit.fleet.mqtt import BrokerUnreachable

    with pytest.raises(BrokerUnreachable, match="cannot reach the MQTT broker"):
        mqtt.connect(mqtt.client("t"), f"mqtt://127.0.0.1:{free_port()}")
