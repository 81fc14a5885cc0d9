"""OpenVINO on the host: ONNX is converted to IR (static shapes for transformers, which its INT8 kernels
need for their best speed); --auto tries NNCF INT8 and, for a trainable model or a transformer encoder, pruning
before it."""

from __future__ import annotations

from typing import Any

NAME = "openvino"
CONVERTER = "convert_openvino"
# precisions the CPU plugin runs an fp32 IR in by itself (its inference precision hint: bf16 on AMX/AVX512-BF16)
EXECUTES = ("bf16",)


def base(shape: Any) -> list[dict[str, Any]]:
    return [{"type": CONVERTER, "static_shape": True}] if shape.transformer else []


def compressed(shape: Any, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{"name": f"{NAME}-int8-nncf", "passes": [*base, {"type": "quantize_openvino"}]}]
    out += [{"name": f"{NAME}-{label}-int8", "passes": [prune, *base, {"type": "quantize_openvino"}]}
            for label, prune in shape.prunings]  # fmt: skip
    if shape.trainable:
        out.append({"name": f"{NAME}-prune50-int8", "passes": [{"type": "prune_structured", "ratio": 0.5},
                                                              {"type": "quantize_openvino"}]})  # fmt: skip
    return out
