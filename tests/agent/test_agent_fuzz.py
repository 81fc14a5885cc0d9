"""Issue 8: the agent's MQTT handler fed malformed, oversized, wrongly typed and truncated payloads
(hypothesis; strategies in tests/helpers/fuzzing.py). It must return normally, keep its queues bounded and
leave an ``error`` event for what it refuses. The handler is the real callback paho calls, given real
``MQTTMessage`` objects; the agent is constructed (store, outbox, updater) but not connected. serve's
handlers: tests/edgekit/fleet/test_serve_fuzz.py.
"""

from __future__ import annotations

import tracemalloc

import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from fuzzing import FUZZ, message, payloads, topics
from hypothesis import given


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-agent")
    _, pub = pkgs.keys(root / "keys")
    cfg = AgentConfig(broker="mqtt://127.0.0.1:1", fleet="lab", device_id="dev-1", profile=pkgs.PROFILE,
                      data_dir=root / "data", trust=[pub], outbox_limit=100_000)  # fmt: skip
    return Agent(cfg)


@FUZZ
@given(topic=topics, payload=payloads)
def test_the_agents_message_handler_survives_anything_and_reports_what_it_refuses(agent, topic, payload):
    before = len(agent.outbox)
    queued = (agent.control.qsize(), agent.infer_q.qsize(), agent.transfer._inbox.qsize())
    agent._on_message(None, None, message(topic, payload))  # must not raise
    assert agent.control.qsize() <= 8 and agent.infer_q.qsize() <= 64 and agent.transfer._inbox.qsize() <= 256
    grew = (agent.control.qsize(), agent.infer_q.qsize(), agent.transfer._inbox.qsize()) != queued
    if not grew and topic.endswith(("/desired", "/chunk/response")) and payload:
        assert len(agent.outbox) == before + 1, "a refused message must leave an error event"
    # drain what a valid-looking message queued, so the bounds are tested per message
    for q in (agent.control, agent.infer_q, agent.transfer._inbox):
        while not q.empty():
            q.get_nowait()


def test_oversized_payloads_are_not_kept(agent):
    """Bounded memory: 50 payloads of 2 MiB on every topic leave nothing of that size behind."""
    tracemalloc.start()
    try:
        for _ in range(50):
            for kind in ("desired", "chunk/response"):
                agent._on_message(None, None, message(f"edgekit/v1/lab/dev-1/{kind}", b"{" + b" " * (2 << 20)))
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 1 << 20, f"{current} bytes still held after 100 refused 2 MiB messages"
