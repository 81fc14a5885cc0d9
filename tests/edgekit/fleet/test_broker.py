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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["broker", "--cluster", "3"], "--cluster needs --engine nats"),
        (["broker", "--engine", "rabbit"], "--engine 'rabbit' is not one of mosquitto, nats"),
        (["broker", "--engine", "nats", "--cluster", "0"], "--cluster must be 1 or more"),
    ],
)
def test_impossible_broker_options_are_one_line_errors(cli, args, says):
    code, _out, err = cli(*args)
    assert code != 0 and says in err and "Traceback" not in err


def test_serve_with_a_malformed_or_unreachable_nats_url_is_a_one_line_error(cli, tmp_path):
    from edgekit.fleet.broker import free_port

    (tmp_path / "pk").mkdir()
    db = f"sqlite:///{tmp_path / 'f.db'}"
    code, _out, err = cli("serve", "--packages", tmp_path / "pk", "--db", db, "--nats", "http://x:1")
    assert code != 0 and "must look like nats://HOST:PORT" in err and "Traceback" not in err
    code, _out, err = cli(
        "serve", "--packages", tmp_path / "pk", "--db", db, "--nats", f"nats://127.0.0.1:{free_port()}"
    )
    assert code != 0 and "no server answered" in err and "Traceback" not in err
