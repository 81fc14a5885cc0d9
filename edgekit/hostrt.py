"""Run an artifact on this host: the same predictor interface for torch, ONNX Runtime and OpenVINO.

Used by the pipeline for evaluation and host latency. Thread counts come from the profile so numbers
are comparable across steps; OpenVINO's precision hint is always set explicitly because its CPU plugin
otherwise runs bf16 silently on CPUs with AMX/avx512_bf16.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from edgekit.artifact import Artifact
from edgekit.bundle import Feed

Predictor = Callable[[Feed], list[np.ndarray]]


def ov_config(artifact: Artifact, threads: int) -> dict[str, str]:
    config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    config["INFERENCE_PRECISION_HINT"] = "f32"
    config.update(artifact.runtime_config)
    return config


def predictor(artifact: Artifact, *, threads: int) -> Predictor:
    if artifact.kind == "torch":
        import torch

        torch.set_num_threads(threads)
        module = artifact.module.eval()

        def run_torch(feed: Feed) -> list[np.ndarray]:
            with torch.inference_mode():
                out = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()))
            outs = out if isinstance(out, tuple | list) else (out,)
            return [o.float().numpy() for o in outs]

        return run_torch
    if artifact.kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_ort(feed: Feed) -> list[np.ndarray]:
            return session.run(None, {n: feed[n] for n in names})

        return run_ort
    import openvino as ov

    compiled = ov.Core().compile_model(str(artifact.path), "CPU", ov_config(artifact, threads))
    request = compiled.create_infer_request()
    ov_names = [i.get_any_name() for i in compiled.inputs]

    def run_ov(feed: Feed) -> list[np.ndarray]:
        result = request.infer({n: feed[n] for n in ov_names})
        return [np.array(result[o]) for o in compiled.outputs]

    return run_ov


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
