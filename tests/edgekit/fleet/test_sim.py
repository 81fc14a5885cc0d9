"""Simulated devices' bookkeeping, on a real Mosquitto: what counts as acknowledged decides whether a
load test or the node-kill scenario reports "every message acknowledged"."""

from __future__ import annotations

import pytest
from edgekit_agent.protocol import ChunkRequest
from fleet import wait_until

from edgekit.fleet.sim import Simulation

pytestmark = pytest.mark.integration


def test_a_device_whose_broker_went_away_counts_only_its_qos1_messages_as_unacknowledged(broker):
    """paho drops a QoS 0 message published while the connection is down and never calls ``on_publish`` for
    it; a QoS 1 message is kept and sent on reconnect. A chunk request (QoS 0) made during a failover once
    left a device "unacknowledged" forever, failing a node-kill run whose telemetry had all arrived."""
    sim = Simulation(broker.url, "lab", 1)
    sim.start()
    try:
        device = sim.devices[0]
        wait_until(lambda: device.connected, "connected")
        sim.run(messages=3, rate=None)
        assert sim.wait_acked(10)
        broker.stop()
        wait_until(lambda: not device.connected, "the device saw its broker go")
        before = device.unacked  # Mosquitto stopping may deliver the device's will to itself: it says "online"
        device._request(ChunkRequest("r1", "0" * 64, 0, 1024))  # QoS 0: dropped by paho
        device.telemetry(3, 1.0)  # QoS 1: kept for the reconnect
        assert device.unacked == before + 1
        assert not sim.wait_acked(0.5)
        broker.start()
        assert sim.wait_acked(60), f"{device.unacked} unacknowledged after the broker came back"
    finally:
        sim.stop()
