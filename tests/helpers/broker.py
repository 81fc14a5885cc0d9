"""The tests' broker is the product's local broker launcher (Mosquitto, amqtt where it is absent)."""

from edgekit.fleet.broker import LocalBroker as Broker

__all__ = ["Broker"]
