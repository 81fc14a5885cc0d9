"""Issue 8: serve's MQTT handler and ingest fed malformed, oversized, wrongly typed and truncated payloads
(hypothesis; strategies in tests/helpers/fuzzing.py): no exception, a bounded queue, and every message
either taken or counted as refused/malformed."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ, message, payloads, topics
from hypothesis import given

from edgekit.fleet.ingest import Ingest
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.store import Store


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-serve")
    (root / "repo").mkdir()
    ingest = Ingest(Store(f"sqlite:///{root / 'fleet.db'}"))
    server = PackageServer(root / "repo", "mqtt://127.0.0.1:1", ingest=ingest)
    ingest.start()
    yield server
    ingest.stop()


@pytest.fixture(scope="module")
def transport(serve):
    """What start() makes, left unconnected: acks go nowhere."""
    from edgekit.fleet.transports.mqtt import MqttTransport

    return MqttTransport(serve, serve.broker)


@FUZZ
@given(topic=topics, payload=payloads)
def test_serves_message_handler_and_ingest_survive_anything_and_count_what_they_refuse(
    serve, transport, topic, payload
):
    stats = serve.ingest.stats
    counted = (serve.refused, stats.malformed, stats.received)
    transport._on_message(None, None, message(topic, payload))  # must not raise
    assert transport._queue.qsize() <= 1024
    assert (serve.refused, stats.malformed, stats.received) != counted, "the message was neither refused nor taken"
    while not transport._queue.empty():  # a valid-looking chunk request: answer it as the worker would
        _fleet, _device, request = transport._queue.get_nowait()
        response = serve.answer(request)
        assert response is not None and response.error  # the repository is empty: a clear error, no crash


@FUZZ
@given(topic=topics, payload=payloads)
def test_the_nats_transports_handlers_survive_anything_and_count_what_they_refuse(serve, topic, payload):
    """The queue-group request callback and the JetStream consumer's report handler, fed the same payloads
    on the subjects NATS would deliver them on (no cluster needed: the transport only moves bytes)."""
    from edgekit_agent.protocol import subject_of, topic_of

    from edgekit.fleet.transports.nats import NatsTransport

    nats = NatsTransport(serve, "nats://127.0.0.1:1", group="fuzz")
    stats = serve.ingest.stats
    subject = subject_of(topic)
    counted = (serve.refused, serve.failures)
    answer = nats.request(subject, payload)  # must not raise
    if answer is None:
        assert (serve.refused, serve.failures) != counted, "a request neither answered nor refused"
    else:  # a valid request for a package the empty repository lacks: a clear error back to the device
        assert answer[0].endswith(".chunk.response")
    received, acked = stats.received, []
    taken = nats.report(NatsTransport.MQTT_PREFIX + subject, payload, lambda: acked.append(1))
    assert taken == (topic_of(subject).rsplit("/", 1)[-1] in NatsTransport.REPORTS)  # the rest is acked at once
    assert stats.received == received + int(taken)
