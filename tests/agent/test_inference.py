"""The agent's inference handler without a model: what a caller is told while the agent starts."""

import json

from edgekit_agent.inference import handle


def test_a_request_while_the_installed_model_loads_is_told_to_ask_again_not_that_nothing_is_installed():
    recorded = []
    payload = json.dumps({"id": "r1", "inputs": {}}).encode()
    rid, response = handle(payload, None, recorded.append, loading=True)
    assert rid == "r1" and response["error"].startswith("busy: loading")
    _, response = handle(payload, None, recorded.append, loading=False)
    assert response["error"] == "no model is installed yet"
    assert recorded == [None, None]  # both counted as errors in telemetry


def test_a_payload_with_nan_or_deep_nesting_is_a_bad_request_answered_not_a_crash():
    for payload in (b'{"id": "r2", "inputs": {"x": NaN}}', b"[" * 50_000):
        rid, response = handle(payload, None, lambda _ms: None)
        assert rid is None and response["error"].startswith("bad request")
