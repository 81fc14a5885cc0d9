"""One runtime's figures for the language-model bench, in a process of its own (its peak RSS is its own).

``python llm_worker.py SPEC.json`` prints one JSON line: time to first token and decode rate over the
spec's prompts (the first is a warm-up; every run another prompt, so no runtime reuses a cached prefix),
then held-out perplexity over the spec's windows, and the peak RSS after the timed runs. Every runtime gets
the same token ids, greedy decoding, the same threads. Run as a script, not a module: the llama.cpp venv
has numpy and llama-cpp-python, not edgekit.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    logits = logits[: len(ids) - 1].astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())


def _peak_rss() -> int:
    """This process's peak resident memory: VmHWM, which starts anew at exec (ru_maxrss does not on Linux: a
    child forked from a large bench process would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rates(times: list[float], start: float) -> tuple[float, float]:
    return (times[0] - start) * 1e3, (len(times) - 1) / (times[-1] - times[0])


class Torch:
    """transformers eager, fp32 (the GGUF dequantized, cached as safetensors after the first load)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.set_num_threads(spec["threads"])
        cache = Path(spec["cache"])
        if not (cache / "weights.pt").exists():  # transformers will not save_pretrained a GGUF-loaded model
            gguf = Path(spec["gguf"])
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "config.json").write_text(json.dumps(config))
            tmp = cache / f".weights.pt.{os.getpid()}.tmp"  # two benches at once each write their own
            torch.save(model.state_dict(), tmp)
            tmp.replace(cache / "weights.pt")
        config = json.loads((cache / "config.json").read_text())
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        model.load_state_dict(torch.load(cache / "weights.pt", weights_only=True))
        self.torch = torch
        self.model = model.eval()

    def generate(self, prompt: list[int], n: int) -> tuple[float, float]:
        torch = self.torch
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(torch.tensor([prompt]), use_cache=True)
            times = []
            for _ in range(n):
                token = out.logits[0, -1].argmax()
                times.append(time.perf_counter())
                out = self.model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
        return _rates(times, start)

    def nll(self, window: list[int]) -> float:
        with self.torch.inference_mode():
            return _nll(self.model(self.torch.tensor([window])).logits[0].numpy(), window)


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the GGUF file as it is."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from llama_cpp import Llama

        kw = {"n_ctx": 1024, "n_threads": spec["threads"], "n_threads_batch": spec["threads"], "verbose": False}
        self.Llama, self.kw, self.path = Llama, kw, spec["gguf"]
        self.llm = Llama(model_path=self.path, **kw)

    def generate(self, prompt: list[int], n: int) -> tuple[float, float]:
        self.llm.reset()
        times = []
        start = time.perf_counter()
        for _token in self.llm.generate(prompt, top_k=1, temp=0.0, reset=True):  # temp 0: greedy, EOS ignored
            times.append(time.perf_counter())
            if len(times) == n:
                break
        return _rates(times, start)

    def nll(self, window: list[int]) -> float:
        if not hasattr(self, "scorer"):
            self.scorer = self.Llama(model_path=self.path, logits_all=True, **self.kw)
        self.scorer.reset()
        self.scorer.eval(window)
        return _nll(np.asarray(self.scorer.scores[: len(window)]), window)


class GenAI:
    """An edgekit package directory through the agent's own runtime (edgekit_agent.runtimes.genai)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from edgekit_agent.runtimes import get

        self.dir, self.config, self.threads = Path(spec["model"]), spec["config"], spec["threads"]
        self.gen = get("openvino-genai").open_generator(self.dir / "openvino_model.xml", "CPU", threads=self.threads,
                                                        config=self.config)  # fmt: skip

    def generate(self, prompt: list[int], n: int) -> tuple[float, float]:
        out = self.gen.generate(prompt, max_new_tokens=n, ignore_eos=True)
        return out.ttft_ms, out.decode_tokens_per_s

    def perplexity(self, windows: list[list[int]]) -> float:
        from edgekit.llm.evaluate import perplexity

        return perplexity(self.dir, windows, threads=self.threads, config=self.config)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    runtime = {"torch": Torch, "llamacpp": LlamaCpp, "genai": GenAI}[spec["kind"]](spec)
    load_s = time.perf_counter() - t0
    prompts, n = spec["prompts"], spec["new_tokens"]
    runtime.generate(prompts[0], min(n, 8))
    runs = [runtime.generate(p, n) for p in prompts[1:]]
    peak = _peak_rss()
    windows = spec["heldout"]
    if hasattr(runtime, "perplexity"):
        ppl = runtime.perplexity(windows)
    else:
        ppl = math.exp(sum(runtime.nll(w) for w in windows) / sum(len(w) - 1 for w in windows))
    rates = [r for _t, r in runs]
    print(
        json.dumps(
            {
                "ttft_ms": statistics.median(t for t, _r in runs),
                "decode_tokens_per_s": statistics.median(rates),
                "decode_range": [min(rates), max(rates)],
                "perplexity": ppl,
                "peak_rss_bytes": peak,
                "load_seconds": round(load_s, 2),
                "runs": len(runs),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
