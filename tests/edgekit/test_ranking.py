"""Issue 21: --auto's ranking is not noise. Interleaved timing with 95 % intervals on real ONNX Runtime
sessions: models that differ clearly are told apart, the same way every time; a tie is a tie."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.artifact import Artifact
from edgekit.auto import CandidateResult, choose
from edgekit.hostrt import Timing, interleaved, predictor


def _onnx(tmp_path, name: str, width: int) -> Artifact:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 64),), str(path), input_names=["x"], dynamo=False)
    return Artifact(kind="onnx", path=path)


def apart(t: dict[str, Timing]) -> bool:
    (a, b) = t.values()
    return a.interval[1] < b.interval[0] or b.interval[1] < a.interval[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranking")
    return {"small": _onnx(tmp, "small", 16), "large": _onnx(tmp, "large", 1024)}  # ~4,000x the MACs


def test_models_that_differ_clearly_are_told_apart_the_same_way_five_times_out_of_five(models):
    feed = {"x": np.zeros((1, 64), np.float32)}
    predicts = {n: predictor(a, threads=1) for n, a in models.items()}
    verdicts = []
    for _ in range(5):
        t = interleaved(predicts, feed, settled=apart, seconds=5.0)
        assert apart(t), {n: (x.median, x.interval) for n, x in t.items()}
        verdicts.append(min(t, key=lambda n: t[n].median))
        lo, hi = t["small"].interval
        assert lo <= t["small"].median <= hi and len(t["small"].samples) >= 30
    assert verdicts == ["small"] * 5


def _row(name: str, runtime: str, precision: str, latency: float, interval, size: int, steps: int = 1):
    r = CandidateResult(name, runtime, precision, 1.0, 0.0, latency, size, "ok")
    r.latency_interval_ms, r.steps = interval, [None] * steps
    return r


def test_overlapping_intervals_are_a_tie_won_by_the_smaller_model_and_only_a_measurably_slower_int8_is_refused():
    parent = _row("onnxruntime-fp32", "onnxruntime", "fp32", 1.00, (0.95, 1.05), 4000)
    int8_tied = _row("onnxruntime-int8-static", "onnxruntime", "int8", 1.02, (0.97, 1.08), 1000, 2)
    int8_slow = _row("onnxruntime-int8-dynamic", "onnxruntime", "int8", 1.50, (1.40, 1.60), 1000, 2)
    best = choose([parent, int8_tied, int8_slow])
    assert best is int8_tied  # as fast within the noise, and a quarter of the size
    assert int8_slow.status == "slower-than-fp32" and "interval" in int8_slow.reason
    clearly = _row("openvino-fp32", "openvino", "fp32", 0.50, (0.48, 0.52), 4000)
    assert choose([parent, int8_tied, clearly]) is clearly  # measurably faster beats smaller


def test_a_candidate_measurably_over_the_latency_budget_is_left_out_and_one_whose_interval_reaches_it_is_not():
    fp32 = _row("onnxruntime-fp32", "onnxruntime", "fp32", 2.00, (1.90, 2.10), 4000)
    int8 = _row("onnxruntime-int8-static", "onnxruntime", "int8", 1.20, (1.10, 1.30), 1000, 2)
    assert choose([fp32, int8], latency_budget_ms=1.5) is int8
    assert fp32.status == "over-latency-budget" and "1.900-2.100" in fp32.reason and "on this host" in fp32.reason
    reaching = _row("onnxruntime-fp32", "onnxruntime", "fp32", 2.00, (0.90, 2.10), 4000)
    assert choose([reaching], latency_budget_ms=1.0) is reaching  # not measurably over: kept
    assert choose([_row("x", "onnxruntime", "fp32", 2.0, (1.9, 2.1), 1)], latency_budget_ms=1.0) is None
