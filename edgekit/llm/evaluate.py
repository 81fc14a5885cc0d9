"""Measure a language-model directory as a device would run it: held-out perplexity, time to first token,
decode rate. Generation goes through the agent's own runtime (``edgekit_agent.runtimes.genai``); perplexity
runs the same model with the same plugin settings, one full window per call (its logits at every position)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.runtimes import genai


def perplexity(model_dir: Path, windows: list[list[int]], *, threads: int, config: dict[str, str]) -> float:
    """exp(mean negative log-likelihood of every next token) over ``windows``."""
    import numpy as np

    run = genai.logits(model_dir, threads=threads, config=config)
    nll, count = 0.0, 0
    for window in windows:
        logits = run(window)[:-1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        nll += float((logz - logits[np.arange(len(window) - 1), window[1:]]).sum())
        count += len(window) - 1
    return math.exp(nll / max(count, 1))


@dataclass
class Speed:
    ttft_ms: float  # median over runs
    decode_tokens_per_s: float  # median over runs
    decode_interval: tuple[float, float]  # lowest and highest run: overlapping ranges are a tie
    prompt_tokens: int
    new_tokens: int
    runs: int


def speed(generator: Any, prompts: list[list[int]], *, new_tokens: int) -> Speed:
    """Greedy generation of exactly ``new_tokens`` after each prompt but the first (the warm-up).

    Every run gets another prompt: LLMPipeline keeps the KV cache of the previous call and reuses a common
    prefix, so the same prompt again would time a cache hit (measured: 14 ms instead of 82 ms for the first
    token of a 128-token prompt), not the prompt a user sends.
    """
    generator.generate(prompts[0], max_new_tokens=min(new_tokens, 8), ignore_eos=True)
    ttft, rate = [], []
    for prompt in prompts[1:]:
        out = generator.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True)
        ttft.append(out.ttft_ms)
        rate.append(out.decode_tokens_per_s)
    return Speed(
        statistics.median(ttft),
        statistics.median(rate),
        (min(rate), max(rate)),
        len(prompts[-1]),
        new_tokens,
        len(prompts) - 1,
    )


def greedy(generator: Any, prompt: list[int], n: int) -> list[int]:
    return generator.generate(prompt, max_new_tokens=n, ignore_eos=True).tokens
