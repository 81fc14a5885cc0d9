"""A language-model device's telemetry (tokens, time to first token, decode rate, energy per token, peak RSS)
goes through the schema into the store and out to fleet status and the HTML report; a store written before
these fields existed migrates."""

from __future__ import annotations

import json
import time

from edgekit_agent.schema import telemetry_message
from edgekit_agent.telemetry import Telemetry

from edgekit.fleet.ingest import Ingest
from edgekit.fleet.report import write_report
from edgekit.fleet.status import status_rows, status_table
from edgekit.fleet.store import Store


class _Estimate:
    measured = False

    def read(self, _utilisation):
        from edgekit_agent.power import Reading

        return Reading(5.0, "estimate", False)


def test_generation_figures_reach_the_store_status_and_report(tmp_path):
    from rich.console import Console

    telemetry = Telemetry(_Estimate())
    for tokens, ttft, rate in ((20, 80.0, 50.0), (10, 120.0, 40.0), (0, None, None)):
        telemetry.record_generation(tokens, ttft, rate)  # the last: a failed generation, an error
    snap = telemetry.snapshot()
    assert snap["generations"] == 2 and snap["tokens_generated"] == 30 and snap["errors"] == 1
    assert snap["ttft_p50_ms"] in (80.0, 120.0) and snap["ttft_p95_ms"] == 120.0 and snap["decode_tokens_per_s"] > 0
    assert snap["energy_per_token_mj"] > 0 and snap["energy_is_estimate"] and snap["peak_rss_bytes"] > 0
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    ingest = Ingest(store)
    ingest.start()
    state = {"status": "online", "device": "llm-1", "profile": "x86-64-generic", "runtime": "openvino-genai:CPU",
             "package": {"name": "smollm2", "version": "1", "counter": 1}, "capabilities": {}}  # fmt: skip
    ingest.accept("edgekit/v1/lab/llm-1/state", json.dumps(state).encode())
    body = snap | {"device": "llm-1", "time": "2026-11-30T10:00:00Z", "seq": 1}
    ingest.accept("edgekit/v1/lab/llm-1/telemetry", json.dumps(body).encode())
    assert ingest.flush(10)
    ingest.stop()
    (row,) = status_rows(store, "lab")
    assert row["tokens_generated"] == 30 and row["energy_per_token_mj"] == snap["energy_per_token_mj"]
    console = Console(width=250, record=True)
    console.print(status_table([row], "lab"))
    text = console.export_text()
    assert "tok/s" in text and "mJ/token" in text and " est." in text
    page = write_report(store, "lab", tmp_path / "r.html", since=time.time() - 86400).read_text()
    assert "decode_tokens_per_s" in page and "ttft_p95_ms" in page


def test_a_tensor_device_shows_no_generation_columns(tmp_path):
    from rich.console import Console

    row = {k: None for k in ("tokens_generated", "decode_tokens_per_s")}
    row |= {"device": "d", "profile": "p", "arch": None, "emulated": False, "online": True, "package": None,
            "version": None, "runtime": None, "p50_ms": 1.0, "p95_ms": 2.0, "throughput_per_s": 3.0,
            "power_w": None, "power_source": "none", "energy_is_estimate": False, "energy_per_inference_mj": None,
            "stuck": False, "last_seen": None}  # fmt: skip
    console = Console(width=250, record=True)
    console.print(status_table([row], "lab"))
    assert "tok/s" not in console.export_text()
    assert telemetry_message({"tokens_generated": None}) == {"tokens_generated": None}
