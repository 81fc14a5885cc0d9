"""The language-model bench: SmolLM2-135M-Instruct (Q4_1 GGUF) side by side in one run, on the same cores.

Anchors: transformers eager fp32 (the GGUF dequantized) and llama.cpp on the Q4_1 file; then each
``--auto`` candidate of ``edgekit package smollm2`` (edgekit.llm.build, the same code), measured again here
through the agent's runtime. Every runtime gets the same token ids (held-out windows for perplexity,
128-token prompts, 128 greedy new tokens, EOS ignored), the same threads, and a process of its own
(``llm_worker.py``), so its peak RSS is its own. Then the chosen package on the real agent over a loopback
broker: the tokens it streams against a host-side run, and its decode rate against the bare runtime's,
interleaved.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.bench import ROOT, header, log

LLAMA_VENV = ROOT / ".venv-llama"
# llama.cpp's Python bindings build from source (10-20 min on 2 cores, once); their own venv keeps our pins still
LLAMA_PINS = ["llama-cpp-python==0.3.36", "numpy==2.4.6"]
WORKER = Path(__file__).with_name("llm_worker.py")
THREADS = 2


# this machine's ISA extensions, each turned on in llama.cpp's build by name; AMX stays off: llama-cpp-python
# 0.3.36's AMX path dies of SIGILL here (``tilezero`` in ggml_backend_amx_mul_mat, on a worker thread), and
# GGML_NATIVE would compile it in
LLAMA_ISA = (("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"),
             ("avx512f", "GGML_AVX512"), ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"),
             ("avx512vbmi", "GGML_AVX512_VBMI"), ("avx_vnni", "GGML_AVX_VNNI"))  # fmt: skip


def llama_cmake_args() -> str:
    from edgekit.profiles import cpu_flags

    flags = cpu_flags()
    on = [f"-D{option}=ON" for flag, option in LLAMA_ISA if flag in flags]
    return " ".join(["-DGGML_NATIVE=OFF", *on, "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"])


def llama_python() -> Path:
    """The Python of the bench's llama.cpp virtualenv, created on first use (it compiles llama.cpp for this CPU,
    10-20 min)."""
    from edgekit.bench import side_venv

    pins = ["--no-cache-dir", *LLAMA_PINS]  # a wheel cached from another CPU's build would be taken as it is
    return side_venv(LLAMA_VENV, [pins], "llama-cpp-python", env={"CMAKE_ARGS": llama_cmake_args()})


def _worker(python: Path, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = tmp / f"spec-{spec['label']}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([str(python), str(WORKER), str(path)], capture_output=True, text=True, timeout=1800,
                          check=False, cwd=ROOT)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {spec['label']} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def run(*, quick: bool = False) -> dict[str, Any]:
    from edgekit.llm import build
    from edgekit.llm import gguf as gguf_file
    from edgekit.llm.compress import parse_recipe
    from edgekit.modelsrc import cache_dir
    from edgekit.profiles import load_profile

    gguf = gguf_file.resolve("smollm2")
    profile = load_profile("x86-64-generic").model_copy(update={"threads": THREADS})
    res: dict[str, Any] = {"model": gguf_file.inspect(gguf).name, "threads": THREADS}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-llm-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        lab = build.Lab(gguf, tmp / "lab", profile, build.Measures(), log)
        built = [lab.build(parse_recipe(dict(c), source=c["name"])) for c in build.AUTO]
        everyone = [lab.reference, *built]
        best = build.choose(everyone, lab.reference)
        assert best is not None, [(c.recipe.name, c.status, c.reason) for c in everyone]
        res["auto_seconds"] = round(time.perf_counter() - t0, 1)
        res["chosen"] = best.recipe.name
        res["host_rows"] = [c.row(lab.reference.perplexity) for c in everyone]
        common = {"threads": THREADS, "prompts": lab.prompts, "new_tokens": lab.m.new_tokens, "heldout": lab.heldout}
        res["prompt_tokens"], res["heldout_tokens"] = len(lab.prompts[-1]), sum(map(len, lab.heldout))
        res["new_tokens"] = lab.m.new_tokens
        rows = []
        log("torch fp32 eager")
        torch_spec = {"kind": "torch", "label": "torch", "gguf": str(gguf), "cache": str(cache_dir() / "smollm2-fp32")}
        rows.append({"name": "torch fp32 eager (dequantized GGUF)", "size_bytes": 4 * lab.info.params,
                     **_worker(Path(sys.executable), torch_spec | common, tmp)})  # fmt: skip
        log("llama.cpp on the Q4_1 GGUF")
        rows.append({"name": "llama.cpp Q4_1 (llama-cpp-python 0.3.36)", "size_bytes": _size(gguf),
                     **_worker(llama_python(), {"kind": "llamacpp", "label": "llamacpp", "gguf": str(gguf)} | common,
                               tmp)})  # fmt: skip
        for c in everyone:
            log(f"edgekit {c.recipe.name}")
            spec = {"kind": "genai", "label": c.recipe.name, "model": str(c.directory),
                    "config": c.recipe.runtime_config}  # fmt: skip
            rows.append({"name": f"edgekit {c.recipe.name}", "size_bytes": c.size_bytes, "chosen": c is best,
                         **_worker(Path(sys.executable), spec | common, tmp)})  # fmt: skip
        res["rows"] = rows
        log("the chosen package on the agent over MQTT")
        res["agent"] = _agent(lab, best, tmp)
    return res


def _agent(lab: Any, best: Any, tmp: Path) -> dict[str, Any]:
    """Tokens streamed over MQTT vs a host-side run; the agent's decode rate vs the bare runtime's."""
    from edgekit_agent.agent import Agent, AgentConfig
    from edgekit_agent.protocol import topic

    from edgekit.bench.agent import _desired, _publish_desired, _wait
    from edgekit.edgepkg import Signing
    from edgekit.fleet import mqtt
    from edgekit.fleet.broker import LocalBroker
    from edgekit.fleet.serve import PackageServer
    from edgekit.keys import init_keys
    from edgekit.llm import build
    from edgekit.runtimes import genai

    keys = init_keys(tmp / "keys")
    repo = tmp / "repo"
    repo.mkdir()
    _result, report = build.package_result(lab, best, [], strict=True, name="smollm2", out=tmp / "pkg")
    pkg = build.seal(lab, best, report, tmp / "pkg", sign=Signing(key=keys.private_path, counter=1),
                     package_file=repo / "smollm2.edgepkg")  # fmt: skip
    assert pkg is not None
    broker = LocalBroker(tmp / "broker")
    broker.start()
    server = PackageServer(repo, broker.url)
    server.start()
    agent = Agent(AgentConfig(broker=broker.url, fleet="bench", device_id="llm", profile="x86-64-generic",
                              data_dir=tmp / "data", trust=[keys.public_path], threads=THREADS))  # fmt: skip
    agent.start()
    client = mqtt.client("bench-llm")
    inbox: list[tuple[float, dict[str, Any]]] = []
    client.on_message = lambda _c, _u, msg: inbox.append((time.perf_counter(), json.loads(msg.payload)))
    try:
        _publish_desired(broker.url, _desired(pkg, 1), "llm")
        _wait(lambda: agent.model is not None and agent.model.generative, "the package serving", 300)
        mqtt.connect(client, broker.url)
        client.subscribe(topic("bench", "llm", "generate/response"), qos=1)
        time.sleep(0.5)
        bare = genai.open_generator(best.directory, threads=THREADS, config=best.recipe.runtime_config)
        texts = [bare.decode(p[1:]) for p in lab.prompts]  # the prompts as text: what a request carries
        bare_rates, agent_rates, client_rates, equal = [], [], [], []
        for i, text in enumerate(texts * 2):
            ids = bare.encode(text)
            host = bare.generate(ids, max_new_tokens=lab.m.new_tokens)
            inbox.clear()
            client.publish(topic("bench", "llm", "generate/request"), json.dumps(
                {"id": f"b{i}", "prompt": text, "max_new_tokens": lab.m.new_tokens}), qos=1)  # fmt: skip
            _wait(lambda: any(m.get("done") for _t, m in inbox), "the generation's final answer", 300)
            deltas = [(t, m) for t, m in inbox if m.get("tokens")]
            final = next(m for _t, m in inbox if m.get("done"))
            equal.append([tok for _t, m in deltas for tok in m["tokens"]] == host.tokens)
            if i == 0:
                continue  # the first round warms both up
            bare_rates.append(host.decode_tokens_per_s)
            agent_rates.append(final["tokens_per_s"])
            arrivals = [t for t, m in deltas for _tok in m["tokens"]]
            client_rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
        bare_p50, agent_p50 = statistics.median(bare_rates), statistics.median(agent_rates)
        return {
            "runs": len(bare_rates), "tokens_equal_host": all(equal), "equal_runs": sum(equal),
            "total_runs": len(equal),
            "bare_tokens_per_s": bare_p50, "agent_tokens_per_s": agent_p50,
            "client_tokens_per_s": statistics.median(client_rates),
            "added_latency_per_token_pct": 100 * (bare_p50 / agent_p50 - 1),
        }  # fmt: skip
    finally:
        client.disconnect()
        client.loop_stop()
        agent.stop()
        server.stop()
        broker.stop()


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def render(res: dict[str, Any]) -> list[str]:
    lines = ["## Small language model: SmolLM2-135M-Instruct (`make bench`, section llm)", "", header(res), ""]
    lines += [
        f"Same {res['threads']} threads, same token ids for every runtime: {res['prompt_tokens']}-token prompts, "
        f"{res['new_tokens']} greedy new tokens (EOS ignored), perplexity over {res['heldout_tokens']:,} held-out "
        "tokens (Python Language Reference prose). Each row ran in a process of its own; decode = the tokens after "
        "the first; p50 over the runs, with the lowest and highest run. `--auto` chose **" + res["chosen"] + "**.",
        "",
        f"| runtime | size | perplexity | first token ms ({res['prompt_tokens']}-token prompt) | decode tok/s (range) "
        "| peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        name = f"**{r['name']}** (chosen)" if r.get("chosen") else r["name"]
        lo, hi = r["decode_range"]
        lines.append(f"| {name} | {_mb(r['size_bytes'])} | {r['perplexity']:.3f} | {r['ttft_ms']:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} ({lo:.1f}-{hi:.1f}) | {_mb(r['peak_rss_bytes'])} |")  # fmt: skip
    rows = {r["name"]: r for r in res["rows"]}
    chosen = next(r for r in res["rows"] if r.get("chosen"))
    llama = next(r for n, r in rows.items() if n.startswith("llama.cpp"))
    torch = next(r for n, r in rows.items() if n.startswith("torch"))
    lines += [
        "",
        f"Goal: the chosen package decodes {chosen['decode_tokens_per_s'] / llama['decode_tokens_per_s']:.2f}x "
        f"llama.cpp's rate on the Q4_1 file (perplexity {chosen['perplexity']:.3f} vs {llama['perplexity']:.3f}) "
        f"and {chosen['decode_tokens_per_s'] / torch['decode_tokens_per_s']:.2f}x torch fp32 eager (goal: >1x "
        "llama.cpp at no worse perplexity, >=3x torch).",
    ]
    a = res["agent"]
    lines += [
        "",
        f"Through the real agent on a loopback Mosquitto ({a['runs']} runs after a warm-up, interleaved with the "
        f"bare runtime): the streamed tokens equal a host-side greedy run of the same package in {a['equal_runs']} "
        f"of {a['total_runs']} generations; decode {a['agent_tokens_per_s']:.1f} tok/s on the agent vs "
        f"{a['bare_tokens_per_s']:.1f} bare: **{a['added_latency_per_token_pct']:+.1f} %** time per token added "
        f"(goal < 5 %); the client saw {a['client_tokens_per_s']:.1f} tok/s arrive. Building and measuring the "
        f"--auto candidates took {res['auto_seconds']:.0f} s.",
    ]
    return lines
