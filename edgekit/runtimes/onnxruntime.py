"""ONNX Runtime on the host: it runs the exported ONNX file; --auto tries dynamic and static INT8 and, for a
model that can be trained, structured pruning before INT8 and the student the model names."""

from __future__ import annotations

from typing import Any

NAME = "onnxruntime"
CONVERTER = None
EXECUTES: tuple[str, ...] = ()  # ONNX Runtime's CPU provider runs each operator in the model's own precision


def base(shape: Any) -> list[dict[str, Any]]:
    return []


def compressed(shape: Any, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [
        {"name": f"{NAME}-int8-dynamic", "passes": [*base, {"type": "quantize_ort", "mode": "dynamic"}]},
        {"name": f"{NAME}-int8-static", "passes": [*base, {"type": "quantize_ort", "mode": "static"}]},
    ]
    if shape.trainable and shape.student:
        out.append({"name": f"{NAME}-distilled", "passes": [{"type": "distill", **shape.student}]})
    if shape.trainable:
        out.append({"name": f"{NAME}-prune50-int8", "passes": [{"type": "prune_structured", "ratio": 0.5},
                                                              {"type": "quantize_ort", "mode": "static"}]})  # fmt: skip
    return out
