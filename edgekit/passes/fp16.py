"""Half-precision weights: ORT float16 conversion (fp32 I/O kept) or OpenVINO fp16 IR with an f16 hint.

Worth it on GPUs, NPUs and CPUs with native fp16 arithmetic; on x86 CPUs without it the runtime
upcasts and it is usually slower — the report's latency says which, and ``--auto`` decides by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, first_line
from edgekit.passes.base import Pass, PassConfig, PassContext


class Fp16Config(PassConfig):
    type: Literal["fp16"] = "fp16"
    keep_io_types: bool = True


class Fp16(Pass):
    Config = Fp16Config
    accepts = ("onnx", "openvino")
    precision = "fp16"
    smoke_rtol = 0.05
    keeps_weights = True

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        cfg: Fp16Config = self.config  # type: ignore[assignment]
        step = ctx.step_dir(self.name)
        try:
            if artifact.kind == "onnx":
                import onnx
                from onnxruntime.transformers.float16 import convert_float_to_float16

                model = convert_float_to_float16(onnx.load(str(artifact.path)), keep_io_types=cfg.keep_io_types)
                path = step / "model.onnx"
                onnx.save(model, str(path))
                real = _ort_host_precision(path, step)
                return artifact.evolve(path=path, notes={"host_execution_precision": real} if real else {})
            import openvino as ov

            path = step / "model.xml"
            ov.save_model(ov.Core().read_model(str(artifact.path)), str(path), compress_to_fp16=True)
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"fp16 conversion failed: {first}") from None
        return artifact.evolve(
            path=path,
            runtime_config={"INFERENCE_PRECISION_HINT": "f16"},
            notes={"precision_hint": "f16", "host_execution_precision": _host_precision(path)},
        )


# ONNX Runtime ops whose arithmetic is the model's cost; the precision they get their weights in is the one the
# host computes in (ORT's CPU provider casts an fp16 op to fp32 where it has no fp16 kernel for it)
_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "Attention",
                "MultiHeadAttention"}  # fmt: skip
_FLOAT16, _FLOAT = 10, 1  # onnx.TensorProto's element types


def _ort_host_precision(path: Any, step: Any) -> str | None:
    """What ONNX Runtime's CPU provider really computes an fp16 model in on this host: read from the graph it
    builds (``optimized_model_filepath``, no optimizations so only its own casts are added): "fp16" when every
    compute op keeps fp16 weights, "fp32" when it cast them all up (x86 CPUs), "mixed" in between."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(step / "ort-host-graph.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    Path(options.optimized_model_filepath).unlink()
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {i.name: i.data_type for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    found = {types.get(n.input[1]) for n in graph.node if n.op_type in _COMPUTE_OPS and len(n.input) > 1}
    found &= {_FLOAT16, _FLOAT}
    return {frozenset({_FLOAT16}): "fp16", frozenset({_FLOAT}): "fp32"}.get(
        frozenset(found), "mixed" if found else "fp32"
    )


def _host_precision(path: Any) -> str:
    """The precision OpenVINO's CPU plugin will really compute in on this host for an f16 hint: f32 on CPUs
    without native fp16 (AVX2-only x86), where the fp16 IR only halves the weights on disk. A device with
    fp16 (rpi5, NPUs) may differ; the report says which host this is."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "f16", "bf16"
    return {"f32": "fp32", "f16": "fp16"}.get(hint, hint)
