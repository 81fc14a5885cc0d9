"""The agent benches a candidate package for the host (``bench/request`` → ``bench/response``) against a real
Mosquitto and ``edgekit serve``: timed per batch size, checked against its sample, never installed, the
serving model answering meanwhile; refused with a reason when tampered, foreign or for another profile;
one bench at a time; the candidates area bounded and emptied."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from edgekit_agent.inference import encode
from edgekit_agent.protocol import BenchRequest, Desired
from fleet import Host, served_repo

from edgekit.fleet.serve import sha256_file

pytestmark = pytest.mark.integration
X = np.linspace(0, 1, 16, dtype=np.float32)[None]


@pytest.fixture
def bench_world(tmp_path, broker):
    agents: list[Agent] = []
    with served_repo(tmp_path, broker.url) as (keys, repo, host, _server):

        def package(name: str, *, key=None, **src) -> Desired:
            path = pkgs.build(pkgs.source_dir(tmp_path / f"src-{name}", **src), repo / f"{name}.edgepkg",
                              key or keys[0], counter=3, version=name)  # fmt: skip
            return Desired("tiny", name, sha256_file(path), 3, path.stat().st_size)

        def agent(**overrides) -> Agent:
            cfg = AgentConfig(broker=broker.url, fleet="lab", device_id="dev-1", profile=pkgs.PROFILE,
                              data_dir=tmp_path / "data", trust=[keys[1]], telemetry_interval=0.5, chunk_size=4096,
                              chunk_timeout=1.0, **overrides)  # fmt: skip
            a = Agent(cfg)
            a.start()
            agents.append(a)
            return a

        yield {"host": host, "package": package, "agent": agent, "repo": repo, "keys": keys, "tmp": tmp_path}
        for a in agents:
            a.stop()


def ask(host: Host, request: BenchRequest, timeout: float = 60.0) -> dict:
    host.publish("bench/request", request.to_json())
    return host.wait_for(
        lambda: next((r for r in host.messages["bench/response"] if isinstance(r, dict) and r.get("id") == request.id),
                     None), f"bench answer {request.id}", timeout)  # fmt: skip


def serving_v1(w) -> Agent:
    agent = w["agent"]()
    w["host"].desire(w["package"]("v1"))
    w["host"].wait_for(lambda: agent.model is not None and agent.model.manifest.version == "v1", "v1 serving")
    return agent


def test_a_candidate_is_timed_per_batch_size_checked_and_deleted_while_the_installed_model_keeps_serving(bench_world):
    w, host = bench_world, bench_world["host"]
    agent = serving_v1(w)
    state_before = (agent.store.root / "state.json").read_bytes()
    current_before = agent.store.current()
    candidate = w["package"]("heavy", model=pkgs.heavy_onnx(hidden=256, layers=24))
    answers: list[dict] = []
    request = BenchRequest("b1", candidate, runs=150, warmup=5, batch_sizes=(1, 4))
    asking = threading.Thread(target=lambda: answers.append(ask(host, request)))
    asking.start()
    # the serving model answers while the bench runs (its latency is in the answer)
    replies = []
    while asking.is_alive() and len(replies) < 200:
        replies.append(host.infer({"x": encode(X)}))
    asking.join(60)
    answer = answers[0]
    assert answer["status"] == "ok", answer
    assert all("error" not in r for r in replies)
    assert answer["package"]["sha256"] == candidate.sha256
    assert answer["engine"] == "onnxruntime" and answer["sample"]["ok"] and answer["fallback"] is None
    by_batch = {b["batch"]: b for b in answer["batches"]}
    assert sorted(by_batch) == [1, 4] and all(b["runs"] == 150 and b["complete"] for b in by_batch.values())
    for b in by_batch.values():
        lo, hi = b["p50_interval_ms"]
        assert lo <= b["p50_ms"] <= hi and b["p50_ms"] <= b["p95_ms"] <= b["p99_ms"]
    assert by_batch[4]["items_per_s"] > 0 and answer["rss_added_bytes"] >= 0
    assert answer["power"]["source"] in {"none", "rapl", "estimate", "hwmon", "jetson-ina3221", "rpi-pmic"}
    assert answer["serving"]["package"]["version"] == "v1"
    assert answer["serving"]["requests"] >= 1 and answer["serving"]["p50_ms"] > 0
    # never installed: the updater's state, current and the versions are as they were, the candidate is gone
    assert (agent.store.root / "state.json").read_bytes() == state_before
    assert agent.store.current() == current_before and agent.model.manifest.version == "v1"
    assert [p.name for p in agent.store.versions.iterdir()] == [current_before.name]
    assert list((agent.store.root / "candidates").iterdir()) == []


def test_tampered_foreign_and_wrong_profile_candidates_are_refused_with_the_reason(bench_world):
    w, host = bench_world, bench_world["host"]
    agent = serving_v1(w)
    other = pkgs.keys(w["tmp"] / "other", name="other")
    foreign = w["package"]("foreign", key=other[0])
    wrong = w["package"]("rpi", profile="rpi4")
    good = w["repo"] / "v1.edgepkg"
    tampered_path = w["repo"] / "tampered.edgepkg"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered_path.write_bytes(bytes(data))
    tampered = Desired("tiny", "tampered", sha256_file(tampered_path), 3, len(data))
    for i, (desired, reason) in enumerate([(foreign, "key"), (wrong, "profile"), (tampered, "")]):
        answer = ask(host, BenchRequest(f"bad{i}", desired, runs=5, warmup=0))
        assert answer["status"] == "refused" and answer["reason"].startswith("package refused"), answer
        assert reason in answer["reason"]
    assert agent.model.manifest.version == "v1" and len(list(agent.store.versions.iterdir())) == 1
    assert list((agent.store.root / "candidates").iterdir()) == []


def test_one_bench_at_a_time_bounded_requests_and_a_full_candidates_area(bench_world):
    w, host = bench_world, bench_world["host"]
    serving_v1(w)
    heavy = w["package"]("heavy", model=pkgs.heavy_onnx())
    host.publish("bench/request", BenchRequest("long", heavy, runs=10_000, max_seconds=3).to_json())
    busy = ask(host, BenchRequest("second", heavy, runs=5))
    assert busy["status"] == "busy" and "another bench" in busy["reason"]
    body = json.loads(BenchRequest("huge", heavy).to_json()) | {"runs": 10**6}
    host.publish("bench/request", json.dumps(body).encode())
    over = host.wait_for(lambda: next((r for r in host.messages["bench/response"] if isinstance(r, dict)
                                       and r.get("id") == "huge"), None), "the refusal of runs=10**6")  # fmt: skip
    assert over["status"] == "refused" and "runs must be in 1..10000" in over["reason"]
    long = host.wait_for(lambda: next((r for r in host.messages["bench/response"] if isinstance(r, dict)
                                       and r.get("id") == "long"), None), "the long bench", 60)  # fmt: skip
    assert long["status"] == "ok" and not long["batches"][0]["complete"] and long["seconds"] < 10


def test_a_candidate_over_the_candidates_area_is_refused_before_any_download(bench_world):
    w, host = bench_world, bench_world["host"]
    agent = w["agent"](bench_space_mb=0.001)
    candidate = w["package"]("big", extra={"pad.bin": os.urandom(20_000)})
    answer = ask(host, BenchRequest("full", candidate, runs=5))
    assert answer["status"] == "refused" and "candidates area is full" in answer["reason"]
    assert agent.bench_transfer.stats.requested == 0
    time.sleep(0.2)
