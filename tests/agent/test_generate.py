"""A language-model package on the real agent over a real broker: installed (its greedy sample is the smoke
test), generation streamed in order on generate/response with the same tokens as a host-side run of the same
package, every bad request answered with an error while the device keeps serving, cancel by id, telemetry."""

from __future__ import annotations

import json
import shutil

import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from edgekit_agent.generate import Limits
from edgekit_agent.protocol import Desired
from fleet import served_repo

from edgekit.fleet.serve import sha256_file

pytestmark = pytest.mark.integration
LIMITS = Limits(max_prompt_tokens=48, max_new_tokens=512, queue=2)


def responses(host, rid: str) -> list[dict]:
    return [r for r in host.messages["generate/response"] if isinstance(r, dict) and r.get("id") == rid]


def ask(host, body: dict, *, timeout: float = 30.0) -> list[dict]:
    """Publish one generate/request; the stream of answers to its id, up to the final one."""
    host.publish("generate/request", json.dumps(body).encode())
    host.wait_for(
        lambda: any(r.get("done") for r in responses(host, body["id"])), f"final answer to {body['id']}", timeout
    )
    return responses(host, body["id"])


def start_agent(tmp_path, broker, trust) -> Agent:
    cfg = AgentConfig(
        broker=broker.url,
        fleet="lab",
        device_id="dev-1",
        profile=pkgs.PROFILE,
        data_dir=tmp_path / "data",
        trust=[trust],
        telemetry_interval=0.5,
        chunk_size=256 * 1024,
        generate_limits=LIMITS,
    )
    agent = Agent(cfg)
    agent.start()
    return agent


def install(host, repo, package, name: str, version: str, counter: int) -> None:
    dest = repo / package.name
    if dest != package:
        shutil.copyfile(package, dest)
    host.desire(Desired(name, version, sha256_file(dest), counter, dest.stat().st_size))
    host.wait_for(
        lambda: any(
            isinstance(s, dict) and s.get("status") == "online" and (s.get("package") or {}).get("counter") == counter
            for s in host.messages["state"]
        ),
        f"serving counter {counter}",
        120,
    )


def test_generation_streams_the_host_tokens_refuses_bad_requests_and_keeps_serving(tmp_path, broker, tiny_llm, cli):
    from edgekit_agent.runtimes import get

    report = tiny_llm["report"]
    with served_repo(tmp_path, broker.url) as (_keys, repo, host, _server):
        agent = start_agent(tmp_path, broker, tiny_llm["keys"][1])
        try:
            install(host, repo, tiny_llm["package"], "tiny-llama", "t1", 7)
            assert host.messages["state"][-1]["runtime"] == "openvino-genai:CPU"
            # the same package on the host, through the same runtime code, greedy
            gen = get("openvino-genai").open_generator(
                tiny_llm["out"] / "openvino_model.xml", "CPU", threads=1, config=report["runtime_config"]
            )
            prompt = "The interpreter reads a program and"
            host_run = gen.generate(gen.encode(prompt), max_new_tokens=20)
            stream = ask(host, {"id": "g1", "prompt": prompt, "max_new_tokens": 20})
            *deltas, final = stream
            assert [m["seq"] for m in stream] == list(range(len(stream)))  # in order, none lost
            assert [t for m in deltas for t in m["tokens"]] == host_run.tokens
            assert "".join(m["text"] for m in deltas) == host_run.text
            assert final["completion_tokens"] == len(host_run.tokens) and final["prompt_tokens"] == len(
                gen.encode(prompt)
            )
            assert final["finish_reason"] in ("length", "stop") and final["ttft_ms"] > 0
            assert final["model"]["runtime"] == "openvino-genai:CPU"

            # bad requests: each answered with an error naming the problem
            long_prompt = " ".join(["word"] * 200)
            cases = {
                "p-long": ({"id": "p-long", "prompt": long_prompt}, "the prompt is"),
                "n-big": ({"id": "n-big", "prompt": "hi", "max_new_tokens": 100_000}, "max_new_tokens"),
                "no-prompt": ({"id": "no-prompt", "max_new_tokens": 4}, "exactly one of 'prompt'"),
                "bad-msg": ({"id": "bad-msg", "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
                "bad-temp": ({"id": "bad-temp", "prompt": "hi", "temperature": -1}, "temperature"),
                "ghost": ({"id": "ghost", "cancel": True}, "no generation with id 'ghost'"),
            }
            for rid, (body, needle) in cases.items():
                (answer,) = ask(host, body)
                assert answer["done"] and needle in answer["error"], (rid, answer)
            host.publish("generate/request", b"{not json")
            host.wait_for(
                lambda: any(
                    r.get("id") is None and "bad request" in r.get("error", "")
                    for r in host.messages["generate/response"]
                ),
                "malformed JSON answered",
            )

            # cancel by id: a running generation stops at its next token, a queued one never starts
            host.publish(
                "generate/request", json.dumps({"id": "long", "prompt": "Once", "max_new_tokens": 512}).encode()
            )
            host.publish(
                "generate/request", json.dumps({"id": "queued", "prompt": "Twice", "max_new_tokens": 8}).encode()
            )
            host.publish("generate/request", json.dumps({"id": "queued", "cancel": True}).encode())
            host.publish("generate/request", json.dumps({"id": "long", "cancel": True}).encode())
            host.wait_for(lambda: any(r.get("done") for r in responses(host, "queued")), "queued answered")
            host.wait_for(lambda: any(r.get("done") for r in responses(host, "long")), "long answered")
            assert responses(host, "queued")[-1] == {
                "id": "queued",
                "seq": 0,
                "done": True,
                "finish_reason": "cancelled",
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            long_final = responses(host, "long")[-1]
            assert long_final["finish_reason"] == "cancelled" and long_final["completion_tokens"] < 512

            # chat messages, and the device still serves after all of that; the CLI prints the same stream
            chat = ask(host, {"id": "c1", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 6})
            assert chat[-1]["finish_reason"] in ("length", "stop") and "error" not in chat[-1]
            code, out, err = cli(
                "fleet", "generate", "dev-1", prompt, "--max-new-tokens", "20", "--broker", broker.url, "--fleet", "lab"
            )
            assert code == 0, err
            assert out.rstrip("\n") == host_run.text.rstrip("\n") and "tokens (" in err
            code, _out, err = cli(
                "fleet", "generate", "dev-1", "hi", "--max-new-tokens", "9999", "--broker", broker.url, "--fleet", "lab"
            )
            assert code == 3 and "max_new_tokens" in err and "Traceback" not in err

            telemetry = host.wait_for(
                lambda: [t for t in host.messages["telemetry"] if (t.get("tokens_generated") or 0) > 0],
                "generation telemetry",
            )[-1]
            assert telemetry["ttft_p50_ms"] > 0 and telemetry["ttft_p95_ms"] >= telemetry["ttft_p50_ms"]
            assert telemetry["decode_tokens_per_s"] > 0 and telemetry["peak_rss_bytes"] >= telemetry["rss_bytes"]
            assert telemetry["energy_is_estimate"] is True or telemetry["energy_per_token_mj"] is None
        finally:
            agent.stop()


def test_a_tensor_package_asked_to_generate_says_so_and_a_generative_one_refuses_infer(tmp_path, broker):
    with served_repo(tmp_path, broker.url) as (keys, repo, host, _server):
        agent = start_agent(tmp_path, broker, keys[1])
        try:
            # requests are interactive (clean session): one sent before the agent subscribed is not delivered
            host.wait_for(lambda: any(isinstance(m, dict) and m.get("status") == "online"
                                      for m in host.messages["state"]), "the agent online")  # fmt: skip
            (answer,) = ask(host, {"id": "early", "prompt": "hi"})
            assert "no model is installed" in answer["error"] or "loading" in answer["error"]
            path = pkgs.build(pkgs.source_dir(tmp_path / "src"), repo / "tiny-v1.edgepkg", keys[0], version="v1")
            install(host, repo, path, "tiny", "v1", 7)
            (answer,) = ask(host, {"id": "g", "prompt": "hi"})
            assert "does not generate text" in answer["error"] and "infer/request" in answer["error"]
            assert "error" not in host.infer({"x": {"data": [[0.0] * 16]}})  # still serving its own kind
        finally:
            agent.stop()
