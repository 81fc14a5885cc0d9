"""Issue 8: serve's MQTT handler and ingest fed malformed, oversized, wrongly typed and truncated payloads
(hypothesis; strategies in tests/helpers/fuzzing.py): no exception, a bounded queue, and every message
either taken or counted as refused/malformed."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ, message, payloads, topics
from hypothesis import given

from edgekit.fleet import mqtt
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.store import Store


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-serve")
    (root / "repo").mkdir()
    ingest = Ingest(Store(f"sqlite:///{root / 'fleet.db'}"))
    server = PackageServer(root / "repo", "mqtt://127.0.0.1:1", ingest=ingest)
    server.client = mqtt.client("serve", manual_ack=True)  # what start() makes, left unconnected: acks go nowhere
    ingest.start()
    yield server
    ingest.stop()


@FUZZ
@given(topic=topics, payload=payloads)
def test_serves_message_handler_and_ingest_survive_anything_and_count_what_they_refuse(serve, topic, payload):
    stats = serve.ingest.stats
    counted = (serve.refused, stats.malformed, stats.received)
    serve._on_message(None, None, message(topic, payload))  # must not raise
    assert serve._queue.qsize() <= 1024
    assert (serve.refused, stats.malformed, stats.received) != counted, "the message was neither refused nor taken"
    while not serve._queue.empty():  # a valid-looking chunk request: answer it as the worker would
        _fleet, _device, request = serve._queue.get_nowait()
        response = serve.answer(request)
        assert response is not None and response.error  # the repository is empty: a clear error, no crash
