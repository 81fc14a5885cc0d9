"""The rule ``--auto`` promises, checked against the latencies the same run measured.

Which candidate wins depends on the CPU (OpenVINO's INT8 MiniLM is 4.9x torch on a Xeon with AMX and slower
than its own fp32 on an EPYC with AVX2 only), so no test may name the winner. What holds on every machine is
the rule: timings carry 95 % intervals (interleaved runs); the chosen candidate is within tolerance and not
measurably slower than the fastest (intervals overlap), and of those tied the smallest; a compressed candidate
is refused only when measurably slower than the fp32 model of its runtime, and kept otherwise.
"""

from __future__ import annotations

from typing import Any


def _lo(row: dict[str, Any]) -> float:
    return (row["latency_interval_ms"] or [row["latency_ms"]])[0]


def _hi(row: dict[str, Any]) -> float:
    return (row["latency_interval_ms"] or [row["latency_ms"]])[-1]


def assert_choice_follows_the_measured_rule(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fail unless ``report`` (``edgekit package --auto --format json``) obeys the rule; returns its rows by name."""
    rows = {c["name"]: c for c in report["candidates"]}
    chosen = rows[report["chosen"]]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert chosen["status"] == "ok", chosen
    fastest = min(ok, key=lambda r: r["latency_ms"])
    tied = [r for r in ok if not _hi(fastest) < _lo(r)]
    assert chosen in tied, (chosen["name"], rows)  # not measurably slower than the fastest
    assert chosen["size_bytes"] == min(r["size_bytes"] for r in tied), (chosen["name"], rows)
    last = report["steps"][-1]
    assert report["precision"] == chosen["precision"] and last["latency_ms"] == chosen["latency_ms"]
    assert "failed" not in {s["gate"] for s in report["steps"]} and chosen["performance_drop"] <= last["tolerance"]
    for row in rows.values():
        parent = rows.get(f"{row['runtime']}-fp32")
        if row["precision"] == "fp32" or parent is None or parent["status"] != "ok":
            continue
        if row["status"] == "ok":  # kept: not measurably slower than its fp32 parent in this run
            assert not _hi(parent) < _lo(row), (row, parent)
        if row["status"] == "slower-than-fp32":  # refused: measurably slower, never by assumption
            assert _hi(parent) < _lo(row), (row, parent)
    return rows
