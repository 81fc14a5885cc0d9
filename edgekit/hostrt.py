"""Run an artifact on this host: the same predictor interface for torch, ONNX Runtime and OpenVINO.

Used by the pipeline for evaluation and host latency. A converted model runs through the agent's own
session code (``edgekit_agent.runtimes``), so the host measures what a device would run; thread counts
come from the profile so numbers are comparable across steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgekit.artifact import Artifact
from edgekit.bundle import Feed
from edgekit.errors import ModelInvalid
from edgekit.runtimes import for_kind

Predictor = Callable[[Feed], list[np.ndarray]]


def predictor(artifact: Artifact, *, threads: int) -> Predictor:
    if artifact.kind == "torch":
        import torch

        torch.set_num_threads(threads)
        module = artifact.module.eval()

        def run_torch(feed: Feed) -> list[np.ndarray]:
            with torch.inference_mode():
                out = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()))
            outs = out if isinstance(out, tuple | list) else (out,)
            if not all(isinstance(o, torch.Tensor) for o in outs):
                kinds = sorted({type(o).__name__ for o in outs})
                raise ModelInvalid(
                    f"forward() returns {', '.join(kinds)}; it must return a tensor or a tuple of tensors (wrap a "
                    "model that returns a dict or a ModelOutput: return out['logits'] or tuple(out.values()))"
                )
            # the dtypes an export keeps (int64 ids stay int64); half precisions as float32, as runtimes give them
            return [(o.float() if o.dtype in (torch.float16, torch.bfloat16) else o).numpy() for o in outs]

        return run_torch
    runtime = for_kind(artifact.kind).runtime  # the agent's session code: the host measures what devices run
    return runtime.open(artifact.path, runtime.cpu, threads=threads, config=artifact.runtime_config).run


def latency_ms(predict: Predictor, feed: Feed, *, min_runs: int = 30, seconds: float | None = None) -> dict[str, float]:
    """p50/p95 of one inference, warm-up excluded.

    Runs at least ``min_runs`` times and for ``seconds`` (default ``$EDGEKIT_LATENCY_SECONDS`` or 1.0),
    at most 5000 times: enough repetitions for a stable median on a noisy shared machine.
    """
    budget = float(os.environ.get("EDGEKIT_LATENCY_SECONDS", "1.0")) if seconds is None else seconds
    for _ in range(5):
        predict(feed)
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        predict(feed)
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        if len(times) >= 5000 or (len(times) >= min_runs and t1 - start >= budget):
            break
    arr = np.array(times)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "runs": len(times)}


@dataclass
class Timing:
    """Latency samples (ms) of one model, and the 95 % confidence interval of their median."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.samples, 95))

    @property
    def interval(self) -> tuple[float, float]:
        """Distribution-free: the order statistics around the median that hold it with 95 % probability
        (normal approximation of the binomial; samples are assumed independent, which interleaving helps)."""
        from edgekit_agent.bench import median_interval  # one definition: devices rank their benches by it too

        return median_interval(self.samples)


def interleaved(
    predicts: dict[str, Predictor],
    feed: Feed,
    *,
    settled: Callable[[dict[str, Timing]], bool],
    seconds: float | None = None,
    runs: int = 10,
    min_rounds: int = 3,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time several models in rounds, each round every model ``runs`` times in a shuffled order, until
    ``settled(timings)`` (after ``min_rounds``) or ``seconds`` are spent (default ``$EDGEKIT_RANK_SECONDS``
    or 5). A load spike then falls on every model alike instead of on whichever was being timed: one
    sequential p50 per model let the same --auto pick different winners 24 minutes apart."""
    import random

    budget = float(os.environ.get("EDGEKIT_RANK_SECONDS", "5.0")) if seconds is None else seconds
    for predict in predicts.values():
        for _ in range(3):
            predict(feed)
    timings = {name: Timing() for name in predicts}
    order, rng, start, rounds = list(predicts), random.Random(seed), time.perf_counter(), 0
    while True:
        rng.shuffle(order)
        for name in order:
            for _ in range(runs):
                t0 = time.perf_counter()
                predicts[name](feed)
                timings[name].samples.append((time.perf_counter() - t0) * 1e3)
        rounds += 1
        if rounds >= min_rounds and (settled(timings) or time.perf_counter() - start >= budget):
            return timings


def io_spec(artifact: Artifact) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Names, dtypes and shapes (None = dynamic) of the artifact's inputs and outputs, as its runtime sees them."""
    if artifact.kind == "torch":
        raise ValueError("no runtime I/O for a torch artifact; export it first")
    return for_kind(artifact.kind).runtime.io_spec(artifact.path)
