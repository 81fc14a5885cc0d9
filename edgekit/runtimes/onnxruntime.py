"""ONNX Runtime on the host: it runs the exported ONNX file; --auto tries dynamic and static INT8 and, for a
model that can be trained, structured pruning before INT8 and the student the model names; for a transformer
encoder, head and FFN pruning before dynamic INT8 (static INT8 breaks its attention: cosine 0.38 on MiniLM)."""

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
    out += [{"name": f"{NAME}-{label}-int8", "passes": [prune, {"type": "quantize_ort", "mode": "dynamic"}]}
            for label, prune in shape.prunings]  # fmt: skip
    if shape.trainable:
        out.append({"name": f"{NAME}-prune50-int8", "passes": [{"type": "prune_structured", "ratio": 0.5},
                                                              {"type": "quantize_ort", "mode": "static"}]})  # fmt: skip
    return out
