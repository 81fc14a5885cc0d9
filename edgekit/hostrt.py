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


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def io_spec(artifact: Artifact) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Names, dtypes and shapes (None = dynamic) of the artifact's inputs and outputs, as its runtime sees them."""
    if artifact.kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])

        def ort_spec(args: list) -> list[dict[str, object]]:
            return [
                {
                    "name": a.name,
                    "dtype": _ORT_TYPES.get(a.type, a.type),
                    "shape": [d if isinstance(d, int) else None for d in a.shape],
                }
                for a in args
            ]

        return ort_spec(session.get_inputs()), ort_spec(session.get_outputs())
    if artifact.kind == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(artifact.path))

        def ov_spec(ports: list) -> list[dict[str, object]]:
            return [
                {
                    "name": p.get_any_name(),
                    "dtype": np.dtype(p.get_element_type().to_dtype()).name,
                    "shape": [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
                }
                for p in ports
            ]

        return ov_spec(model.inputs), ov_spec(model.outputs)
    raise ValueError(f"no runtime I/O for a {artifact.kind} artifact")
