"""The rule ``--auto`` promises, checked against the latencies the same run measured.

Which candidate wins depends on the CPU (OpenVINO's INT8 MiniLM is 4.9x torch on a Xeon with AMX and slower
than its own fp32 on an EPYC with AVX2 only), so no test may name the winner. What holds on every machine is
the rule: the chosen candidate is the fastest of those within tolerance, and a compressed candidate is kept
only when it was measured at least as fast as the fp32 model of its runtime.
"""

from __future__ import annotations

from typing import Any


def assert_choice_follows_the_measured_rule(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fail unless ``report`` (``edgekit package --auto --format json``) obeys the rule; returns its rows by name."""
    rows = {c["name"]: c for c in report["candidates"]}
    chosen = rows[report["chosen"]]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert chosen["status"] == "ok", chosen
    assert chosen["latency_ms"] == min(r["latency_ms"] for r in ok), (chosen["name"], rows)
    last = report["steps"][-1]
    assert report["precision"] == chosen["precision"] and last["latency_ms"] == chosen["latency_ms"]
    assert "failed" not in {s["gate"] for s in report["steps"]} and chosen["performance_drop"] <= last["tolerance"]
    for row in rows.values():
        parent = rows.get(f"{row['runtime']}-fp32")
        if row["precision"] == "fp32" or parent is None or parent["status"] != "ok":
            continue
        if row["status"] == "ok":  # kept: measured no slower than its fp32 parent in this run
            assert row["latency_ms"] <= parent["latency_ms"], (row, parent)
        if row["status"] == "slower-than-fp32":  # refused: measured slower, never by assumption
            assert row["latency_ms"] > parent["latency_ms"], (row, parent)
    return rows
